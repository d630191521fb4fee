#!/usr/bin/env bash
# Builds the Linux guest used to test tandem against the stock Linux NVMe/TCP
# host (and to run Linux's own nvmet-tcp target for comparison): Debian's
# kernel, and an initramfs with busybox-static, nvme-cli, fio, mke2fs, the
# kernel modules they need, and /init (tests/linux/init.sh).
#
# Two releases:
#   debian12 (default)  Debian 12 "bookworm": Linux 6.1, nvme-cli 2.4, from the
#                       machine's own apt sources.
#   debian13            Debian 13 "trixie": Linux 6.12 (CONFIG_NVME_AUTH=m,
#                       CONFIG_NVME_TARGET_AUTH=y: NVMe in-band authentication),
#                       nvme-cli 2.13, through an apt configuration of its own
#                       in $OUT/apt (sources list, lists, cache): the machine's
#                       apt setup is neither read for sources nor changed.
#
# Everything comes from Debian packages fetched with `apt-get download` and
# unpacked with `dpkg -x`; nothing prebuilt from elsewhere.
#
# Output (cached; rebuilt only when missing or when this script, init.sh or the
# package choice changed):
#   $OUT/vmlinuz         the kernel
#   $OUT/initramfs.img   gzip'd newc cpio
#   $OUT/guest.env       KERNEL_VERSION, KERNEL_PACKAGE, MODULES (load order)
# Downloads are kept in $OUT/debs.
#
# Usage: tests/linux/build-guest.sh [--release debian12|debian13] [--force]
# Environment: TANDEM_LINUX_GUEST_DIR (default: <repo>/target/linux-guest);
#   the debian13 guest goes to its subdirectory debian13/.
#   TANDEM_LINUX_GUEST (debian12|debian13): the release when --release is absent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
RELEASE="${TANDEM_LINUX_GUEST:-debian12}"
force=0
while (($#)); do
  case "$1" in
    --force) force=1 ;;
    --release) RELEASE="${2:?--release needs debian12 or debian13}"; shift ;;
    *) echo "build-guest: error: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
BASE="${TANDEM_LINUX_GUEST_DIR:-$repo/target/linux-guest}"
case "$RELEASE" in
  debian12) OUT="$BASE"; KERNEL_SERIES=6.1 ;;
  debian13) OUT="$BASE/debian13"; KERNEL_SERIES=6.12 ;;
  *) echo "build-guest: error: release $RELEASE is neither debian12 nor debian13" >&2; exit 2 ;;
esac
DEBS="$OUT/debs"
POOL="$OUT/pool"     # every downloaded package unpacked (dpkg -x)
ROOT="$OUT/root"     # what goes into the initramfs

# Roots of the module closure. Names use '_' or '-' as the files do; a root
# that is built into the kernel (modules.builtin) is skipped.
MODULE_ROOTS=(
  virtio_net virtio_blk virtio_pci
  9pnet_virtio 9p
  nvme-tcp nvme-fabrics nvme-core
  nvmet-tcp nvmet configfs
  crc32c_generic crc32c-intel
  ext4
)
# Roots loaded when the kernel has them (as modules or built in), skipped
# otherwise. NVMe in-band authentication (DH-HMAC-CHAP; only Debian 13's kernel
# has it) and the crypto it asks for by name: without modprobe in the guest
# the kernel cannot load an algorithm on demand, so load them up front
# (hmac, SHA-2, finite-field Diffie-Hellman with the RFC 7919 groups).
OPTIONAL_MODULE_ROOTS=(nvme-auth nvme-keyring hmac sha256_generic sha512_generic dh_generic kpp)
# Userland packages whose binaries go into the initramfs.
USER_PACKAGES=(busybox-static nvme-cli fio e2fsprogs)
# Binaries copied from the pool (with their library closure).
BINARIES=(usr/bin/fio usr/sbin/nvme sbin/mke2fs)

die() { echo "build-guest: error: $*" >&2; exit 1; }
log() { echo "build-guest: $*" >&2; }

for tool in apt-get apt-cache dpkg dpkg-deb objcopy gzip xz zstd sha256sum timeout flock; do
  command -v "$tool" >/dev/null || die "'$tool' not found on this host (run tests/linux/setup-host.sh)"
done

# A stamp of everything that decides the output.
stamp_of_inputs() {
  { cat "$here/build-guest.sh" "$here/init.sh" "$here/guest-lib.sh"; echo "$RELEASE"; } |
    sha256sum | cut -d' ' -f1
}

mkdir -p "$OUT"
if [[ "$RELEASE" == debian13 ]]; then
  # An apt configuration of this build's own: Debian 13's main archive, with
  # lists and cache under $OUT/apt. APT_CONFIG is read by every apt-get and
  # apt-cache below; /etc/apt/sources.list{,.d} are not consulted.
  APT_DIR="$OUT/apt"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$keyring" ]] || die "$keyring missing (package debian-archive-keyring)"
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" >"$APT_DIR/sources.list"
  cat >"$APT_DIR/apt.conf" <<APTCONF
Dir::Etc::sourcelist "$APT_DIR/sources.list";
Dir::Etc::sourceparts "/dev/null";
Dir::State::Lists "$APT_DIR/lists";
Dir::Cache "$APT_DIR/cache";
APT::Sandbox::User "root";
APTCONF
  export APT_CONFIG="$APT_DIR/apt.conf"
fi

apt_ready() {
  local policy
  policy="$(apt-cache policy linux-image-amd64 2>/dev/null)"
  [[ "$policy" == *"Candidate: "[0-9]* ]]
}
if ! apt_ready; then
  log "apt lists have no linux-image-amd64 candidate ($RELEASE): running apt-get update"
  timeout 300 apt-get update -qq || die "apt-get update failed"
  apt_ready || die "no candidate for linux-image-amd64 after apt-get update (is Debian's main archive in the apt sources?)"
fi

# The kernel package linux-image-amd64 depends on (linux-image-6.1.0-NN-amd64,
# linux-image-6.12.NN+debMM-amd64).
KERNEL_PACKAGE="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[[ -n "$KERNEL_PACKAGE" ]] || die "cannot tell which kernel package linux-image-amd64 depends on"
[[ "$KERNEL_PACKAGE" == linux-image-$KERNEL_SERIES.* ]] ||
  die "linux-image-amd64 depends on $KERNEL_PACKAGE, expected a $KERNEL_SERIES kernel ($RELEASE)"
want_stamp="$(stamp_of_inputs) $KERNEL_PACKAGE"

# One build at a time (tests in several processes may ask at once).
exec 9>"$OUT/.lock"
flock -w 1800 9 || die "another build-guest.sh holds $OUT/.lock for more than 30 min"

if [[ $force == 0 && -s "$OUT/vmlinuz" && -s "$OUT/initramfs.img" && -s "$OUT/guest.env" \
      && "$(cat "$OUT/stamp" 2>/dev/null)" == "$want_stamp" ]]; then
  log "up to date: $OUT/vmlinuz $OUT/initramfs.img"
  exit 0
fi
started=$SECONDS
mkdir -p "$DEBS"

# Library closure by Debian's Depends: follow Depends/Pre-Depends from the
# userland packages, but only through library packages (lib*, zlib1g); the
# first alternative of an `a | b` dependency is taken. What is really needed is
# decided later by ldd; this only has to be a superset.
lib_closure() {
  local -A seen=()
  local frontier=("$@") next pkg dep
  local rounds=0
  while ((${#frontier[@]})); do
    ((rounds++ < 20)) || die "library dependency walk did not converge"
    next=()
    while read -r pkg dep; do
      [[ -n "${seen[$dep]:-}" ]] && continue
      seen[$dep]=1
      next+=("$dep")
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
               --no-replaces --no-enhances "${frontier[@]}" 2>/dev/null |
             awk '/^[^ ]/ {pkg=$1; first=1; next}
                  /^ *\|?(Pre)?Depends:/ {
                    alt = ($1 ~ /^\|/)
                    name=$2; sub(/:any$/, "", name)
                    if (name !~ /^</ && (name ~ /^lib/ || name == "zlib1g") && !skip) print pkg, name
                    skip = alt
                  }')
    frontier=("${next[@]}")
  done
  printf '%s\n' "${!seen[@]}"
}

mapfile -t LIB_PACKAGES < <(lib_closure "${USER_PACKAGES[@]}" | sort)
ALL_PACKAGES=("$KERNEL_PACKAGE" "${USER_PACKAGES[@]}" libc6 "${LIB_PACKAGES[@]}")
mapfile -t ALL_PACKAGES < <(printf '%s\n' "${ALL_PACKAGES[@]}" | sort -u)
log "${#ALL_PACKAGES[@]} packages: ${ALL_PACKAGES[*]}"

# Download what is not cached yet (a package's file name carries its version,
# so a newer Debian version is fetched once and the old one stays unused).
declare -A CANDIDATE=()
while read -r pkg ver; do CANDIDATE[$pkg]="$ver"; done < <(
  apt-cache policy "${ALL_PACKAGES[@]}" | awk '/^[^ ].*:$/ {p=$1; sub(/:$/, "", p)} /^  Candidate:/ {print p, $2}')
deb_of() { # pkg -> cached .deb path of the candidate version, or nothing
  local ver="${CANDIDATE[$1]:-}"
  [[ -n "$ver" && "$ver" != "(none)" ]] || die "package $1 has no candidate version"
  ver="${ver//:/%3a}"
  compgen -G "$DEBS/${1}_${ver}_*.deb" | head -n1 || true
}
missing=()
for p in "${ALL_PACKAGES[@]}"; do
  [[ -n "$(deb_of "$p")" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "downloading ${#missing[@]} packages into $DEBS"
  (cd "$DEBS" && timeout 900 apt-get download -q -o APT::Sandbox::User=root "${missing[@]}") \
    || die "apt-get download failed for: ${missing[*]}"
fi

log "unpacking (at $((SECONDS - started)) s)"
# Unpack into a fresh pool.
rm -rf "$POOL" "$ROOT"
mkdir -p "$POOL" "$ROOT"
for p in "${ALL_PACKAGES[@]}"; do
  deb="$(deb_of "$p")"
  [[ -n "$deb" ]] || die "download of $p left no .deb in $DEBS"
  dpkg -x "$deb" "$POOL"
done
# Debian 13 is merged-/usr (packages ship /usr/bin, /usr/lib, ...): give the
# pool the top-level links a merged-/usr system has, so the paths below
# (bin/busybox, sbin/mke2fs, lib/modules, lib64/ld-linux-x86-64.so.2) hold.
for d in bin sbin lib lib64; do
  [[ -e "$POOL/$d" || ! -d "$POOL/usr/$d" ]] || ln -s "usr/$d" "$POOL/$d"
done

log "modules (at $((SECONDS - started)) s)"
# --- kernel and modules ---------------------------------------------------
KVER="${KERNEL_PACKAGE#linux-image-}"
[[ -f "$POOL/boot/vmlinuz-$KVER" ]] || die "$KERNEL_PACKAGE has no /boot/vmlinuz-$KVER"
moddir="$POOL/lib/modules/$KVER"
[[ -d "$moddir" ]] || moddir="$POOL/usr/lib/modules/$KVER"
[[ -d "$moddir" ]] || die "$KERNEL_PACKAGE has no lib/modules/$KVER"

# name (with '_' for '-') -> path of the module file
declare -A MODFILE=()
while IFS= read -r -d '' f; do
  b="$(basename "$f")"; b="${b%.zst}"; b="${b%.xz}"; b="${b%.ko}"
  MODFILE[${b//-/_}]="$f"
done < <(find "$moddir/kernel" \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' \) -print0)
((${#MODFILE[@]})) || die "no kernel modules found under $moddir"

is_builtin() { # name -> true when in modules.builtin
  [[ -f "$moddir/modules.builtin" ]] &&
    sed -e 's#.*/##' -e 's/\.ko$//' -e 's/-/_/g' "$moddir/modules.builtin" | grep -x "$1" >/dev/null
}

mkdir -p "$ROOT/lib/modules"
decompressed() { # module file -> path of a plain .ko copy under $ROOT/lib/modules
  local src="$1" name="$2" dst="$ROOT/lib/modules/$2.ko"
  if [[ ! -f "$dst" ]]; then
    case "$src" in
      *.ko.xz) xz -dc "$src" >"$dst" ;;
      *.ko.zst) zstd -qdc "$src" >"$dst" ;;
      *.ko) cp "$src" "$dst" ;;
    esac
  fi
  echo "$dst"
}
module_depends() { # plain .ko -> its depends= list, one per line
  local tmp
  tmp="$(mktemp)"
  objcopy -O binary --only-section=.modinfo "$1" "$tmp" || die "cannot read .modinfo of $1"
  tr '\0' '\n' <"$tmp" | sed -n 's/^depends=//p' | tr ',' '\n' | sed '/^$/d; s/-/_/g'
  rm -f "$tmp"
}

# Depth-first post-order: a module comes after everything it depends on.
declare -A STATE=()
ORDER=()
visit() {
  local name="${1//-/_}" ko dep
  case "${STATE[$name]:-}" in
    done) return ;;
    active) die "module dependency cycle through $name" ;;
  esac
  if [[ -z "${MODFILE[$name]:-}" ]]; then
    is_builtin "$name" && { STATE[$name]=done; return; }
    die "module $name is neither in $KERNEL_PACKAGE nor built in"
  fi
  STATE[$name]=active
  ko="$(decompressed "${MODFILE[$name]}" "$name")"
  while read -r dep; do visit "$dep"; done < <(module_depends "$ko")
  STATE[$name]=done
  ORDER+=("$name")
}
for m in "${MODULE_ROOTS[@]}"; do
  n="${m//-/_}"
  if [[ -z "${MODFILE[$n]:-}" ]] && is_builtin "$n"; then continue; fi
  visit "$m"
done
for m in "${OPTIONAL_MODULE_ROOTS[@]}"; do
  n="${m//-/_}"
  if [[ -n "${MODFILE[$n]:-}" ]]; then visit "$m"; else log "optional module $m: built in or absent"; fi
done
printf '%s\n' "${ORDER[@]}" >"$ROOT/lib/modules/load-order"
log "modules (load order): ${ORDER[*]}"

log "userland (at $((SECONDS - started)) s)"
# --- userland ---------------------------------------------------------------
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/nvme,proc,sys,dev,tmp,run,mnt,root,var/tmp}
bb="$POOL/bin/busybox"
[[ -x "$bb" ]] || die "busybox-static has no /bin/busybox"
cp "$bb" "$ROOT/bin/busybox"
# One link per applet busybox was built with (sh, ip, insmod, mount, ...).
for applet in $("$bb" --list-full); do
  [[ -e "$ROOT/$applet" ]] || ln -s /bin/busybox "$ROOT/$applet"
done

# Library search path inside the pool, as the guest's loader will see it.
libdirs=()
for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib usr/lib lib64 \
         usr/lib/x86_64-linux-gnu/ceph usr/lib/x86_64-linux-gnu/libfabric; do
  [[ -d "$POOL/$d" ]] && libdirs+=("$POOL/$d")
done
pool_path="$(IFS=:; echo "${libdirs[*]}")"
pool_loader="$POOL/lib64/ld-linux-x86-64.so.2"
[[ -e "$pool_loader" ]] || pool_loader="$POOL/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
[[ -e "$pool_loader" ]] || die "libc6 has no ld-linux-x86-64.so.2"

copy_into_root() { # pool path -> same path under $ROOT, symlinks followed to the file
  local rel="${1#"$POOL"/}"
  mkdir -p "$ROOT/$(dirname "$rel")"
  rm -f "$ROOT/$rel"   # may be a busybox applet link of the same name
  cp -L "$1" "$ROOT/$rel"
}
for bin in "${BINARIES[@]}"; do
  [[ -x "$POOL/$bin" ]] || die "binary $bin not found in the unpacked packages"
  # The guest is usrmerge'd by hand: /bin and /sbin are real dirs here, so
  # put every binary where PATH finds it.
  copy_into_root "$POOL/$bin"
  # The pool's own loader lists the closure (what ldd does), so a newer
  # release's libc never meets the host's loader or shell.
  ldd_out="$("$pool_loader" --library-path "$pool_path" --list "$POOL/$bin")" || die "ldd failed on $bin"
  if grep -q 'not found' <<<"$ldd_out"; then
    die "$bin needs libraries no downloaded package provides:
$(grep 'not found' <<<"$ldd_out")
(add the package that ships them to USER_PACKAGES or the library walk)"
  fi
  while read -r lib; do
    case "$lib" in
      "$POOL"/*) copy_into_root "$lib" ;;
      *) die "$bin resolved $lib outside the downloaded packages (its package is missing from the closure)" ;;
    esac
  done < <(awk '/=> \// {print $3} /^\t\/[^ ]* \(/ {print $1}' <<<"$ldd_out" | grep -v '^/lib64/ld-linux' || true)
done
ln -sf mke2fs "$ROOT/sbin/mkfs.ext4"
rm -f "$ROOT/sbin/mkfs.ext2"; ln -s mke2fs "$ROOT/sbin/mkfs.ext2"
# The dynamic loader at the path every binary names (PT_INTERP).
mkdir -p "$ROOT/lib64"
cp -L "$POOL/lib64/ld-linux-x86-64.so.2" "$ROOT/lib64/ld-linux-x86-64.so.2" 2>/dev/null ||
  cp -L "$POOL/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$ROOT/lib64/ld-linux-x86-64.so.2" ||
  die "libc6 has no ld-linux-x86-64.so.2"
# Where the loader looks in the guest: the directories the libraries came from.
mkdir -p "$ROOT/etc"
printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/ceph \
  /usr/lib/x86_64-linux-gnu/libfabric >"$ROOT/etc/ld-library-path"
# /etc basics: root user (mke2fs and others look names up), hosts.
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
echo '127.0.0.1 localhost' >"$ROOT/etc/hosts"
install -m 0755 "$here/init.sh" "$ROOT/init"
mkdir -p "$ROOT/usr/lib/tg"
install -m 0644 "$here/guest-lib.sh" "$ROOT/usr/lib/tg/lib.sh"

log "smoke test (at $((SECONDS - started)) s)"
# Smoke test on the host: the staged binaries start with only the staged
# loader and libraries (the guest's library directories).
staged_path="$(sed "s#^#$ROOT#" "$ROOT/etc/ld-library-path" | paste -sd:)"
for bin in "${BINARIES[@]}"; do
  "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$staged_path" "$ROOT/$bin" --version >/dev/null 2>&1 ||
    "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$staged_path" "$ROOT/$bin" -V >/dev/null 2>&1 ||
    die "staged $bin does not start (missing library?)"
done

log "packing (at $((SECONDS - started)) s)"
# --- pack ---------------------------------------------------------------------
cp "$POOL/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) |
  gzip -1 >"$OUT/initramfs.img.tmp" || die "packing the initramfs failed"
{
  echo "RELEASE=$RELEASE"
  echo "KERNEL_PACKAGE=$KERNEL_PACKAGE"
  echo "KERNEL_VERSION=$KVER"
  echo "MODULES=\"${ORDER[*]}\""
} >"$OUT/guest.env"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initramfs.img.tmp" "$OUT/initramfs.img"
echo "$want_stamp" >"$OUT/stamp"
rm -rf "$POOL"
log "built $OUT/vmlinuz ($KVER) and $OUT/initramfs.img ($(du -h "$OUT/initramfs.img" | cut -f1)) in $((SECONDS - started)) s"
