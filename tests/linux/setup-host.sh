#!/usr/bin/env bash
# Installs what the Linux-guest harness needs on a Debian host (as root):
# QEMU (TCG, with 9p), iproute2 (network namespaces, taps), binutils
# (objcopy reads module .modinfo), xz/zstd (compressed modules), flock.
# A no-op when everything is there. Then builds the guests unless --no-build:
# Debian 12 (Linux 6.1, the default host of the tests) and Debian 13 (Linux
# 6.12, for NVMe in-band authentication; fetched through an apt configuration
# of its own, see build-guest.sh).
#
# CI: bash tests/linux/setup-host.sh   (then cargo test -p tandem-linux-guest -- --ignored)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

declare -A need=(
  [qemu-system-x86_64]=qemu-system-x86
  [ip]=iproute2
  [objcopy]=binutils
  [xz]=xz-utils
  [zstd]=zstd
  [flock]=util-linux
  [timeout]=coreutils
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${need[$cmd]}")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || { echo "setup-host: need root to install: ${missing[*]}" >&2; exit 1; }
  echo "setup-host: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian 13's archive is verified with the Debian archive keyring.
if [[ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
  [[ $(id -u) == 0 ]] || { echo "setup-host: need root to install: debian-archive-keyring" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 1200 apt-get install -y -qq --no-install-recommends debian-archive-keyring
fi
qemu-system-x86_64 -device help 2>/dev/null | grep -q virtio-9p-pci ||
  { echo "setup-host: this qemu-system-x86_64 has no 9p (virtio-9p-pci) support" >&2; exit 1; }

[[ "${1:-}" == "--no-build" ]] && exit 0
bash "$here/build-guest.sh" --release debian12
exec bash "$here/build-guest.sh" --release debian13
