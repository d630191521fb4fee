# The Linux host of the HA tests: connects to both data nodes of a tandem
# pair (one subsystem NQN, two portals: native NVMe multipath puts both
# paths under one namespace head), then runs the commands the test drops into
# the share, one at a time: the file cmd-N holds a command word; the output
# goes to res-N and the mark done-N follows.
#
# Commands:
#   paths      each path's controller, address, state and ANA state
#   start-io [ENGINE]
#              fio (random 4 KiB writes with crc32c verify_backlog, rate
#              limited, per-I/O latency log with epoch timestamps; fio's
#              ioengine ENGINE, io_uring by default) and ackcheck (the
#              acknowledged-write checker) in the background
#   start-ck [OFFSET]
#              ackcheck alone (an application that goes on after an I/O
#              error and logs it: the all-paths-down measurement), on its
#              blocks from OFFSET (default CK_OFFSET): a fresh area for each
#              run, since a write that failed leaves an older run's block
#   reconnect [OPTS]
#              disconnects both paths and connects them again with these
#              `nvme connect` options instead of CONNECT_OPTS (none: the
#              defaults of `nvme connect`)
#   settings   the host's timeouts as the kernel applied them (sysfs)
#   dmesg      the kernel's nvme lines, after the guest's uptime and clock
#   io-alive   fails unless both are still running
#   stop-io    stops both; fio's end status and ackcheck's read-back report
#   verify     ackcheck verify: every checker block read back again
#   clock      the guest's wall clock in ms (the logs' timestamps)
#   fio-json NAME RW BS IODEPTH SECONDS
#              one fio job over fio's area, JSON output (benchmarks)
#   fs-make    mkfs.ext4 on the whole namespace, two files written, one
#              deleted and trimmed away (fstrim), their checksum kept,
#              unmounted (not with start-io: it takes the whole namespace)
#   fs-check   mounts it again and checks the kept file
#   exit       ends the script
#
# Env: A_ADDR B_ADDR SUBNQN [PORT=4420] [CONNECT_OPTS] [FIO_SIZE=32M]
#      [FIO_RATE=150] [CK_OFFSET] [CK_BLOCKS=2048] [CK_RATE=150]
. /usr/lib/tg/lib.sh
: "${A_ADDR:?}" "${B_ADDR:?}" "${SUBNQN:?}"
: "${PORT:=4420}" "${FIO_SIZE:=32M}" "${FIO_RATE:=150}" "${CK_OFFSET:=41943040}"
: "${CK_BLOCKS:=2048}" "${CK_RATE:=150}" "${CONNECT_OPTS:=}"

ck="$TG_SHARE/ackcheck"
tg_wait_file "$ck" 60 && chmod +x "$ck" || tg_fail "no ackcheck binary in the share"

connect() {
  tg_retry 90 nvme connect -t tcp -a "$1" -s "$PORT" -n "$SUBNQN" $CONNECT_OPTS ||
    tg_fail "nvme connect to $1"
}

paths() {
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$SUBNQN" ] || continue
    # Not `n`: that is the command counter of the loop below.
    ctl="${c##*/}"
    ana=""
    for p in "$c"/nvme*c*n*; do
      [ -e "$p/ana_state" ] && ana="$ana ${p##*/}=$(cat "$p/ana_state")"
    done
    echo "$ctl: cntlid=$(cat "$c/cntlid") state=$(cat "$c/state") $(cat "$c/address" | tr ',' ' ')$ana"
  done
}

connect_both() {
  connect "$A_ADDR"
  connect "$B_ADDR"
  tg_retry 30 tg_nvme_dev "$SUBNQN" >/dev/null || tg_fail "no namespace head for $SUBNQN"
  dev="$(tg_nvme_dev "$SUBNQN")"
  head="${dev#/dev/}"
  echo "namespace head $dev; iopolicy $(cat /sys/class/nvme-subsystem/*/iopolicy 2>/dev/null | head -n 1)"
  # Both paths must be there before the test starts failing nodes.
  tg_retry 30 sh -c "[ \$(ls -d /sys/class/nvme/nvme*/nvme*c*n* 2>/dev/null | wc -l) -ge 2 ]" ||
    tg_fail "only one path to $SUBNQN"
  paths
}

head_gone() { ! tg_nvme_dev "$SUBNQN" >/dev/null; }

# reconnect [OPTION | sysfs:ATTR=VALUE]...: options for `nvme connect`;
# sysfs:ATTR=VALUE is written to each controller's sysfs attribute once
# connected (what an older nvme-cli has no option for, e.g. nvme-cli 2.4
# and fast_io_fail_tmo).
reconnect() {
  CONNECT_OPTS=""
  sets=""
  for w in "$@"; do
    case "$w" in
      sysfs:*) sets="$sets ${w#sysfs:}" ;;
      *) CONNECT_OPTS="$CONNECT_OPTS $w" ;;
    esac
  done
  nvme disconnect -n "$SUBNQN" || return 1
  tg_retry 30 head_gone
  echo "=== connect both portals with:${CONNECT_OPTS:- (the defaults of nvme connect)}"
  connect_both
  for s in $sets; do
    for c in /sys/class/nvme/nvme*; do
      [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$SUBNQN" ] || continue
      echo "${s#*=}" >"$c/${s%%=*}" || return 1
      echo "${c##*/}: ${s%%=*} set to $(cat "$c/${s%%=*}")"
    done
  done
}

settings() {
  p=/sys/module/nvme_core/parameters
  echo "kernel $(uname -r); nvme_core: multipath=$(cat $p/multipath) io_timeout=$(cat $p/io_timeout) admin_timeout=$(cat $p/admin_timeout) max_retries=$(cat $p/max_retries)"
  echo "iopolicy=$(cat /sys/class/nvme-subsystem/*/iopolicy 2>/dev/null | head -n 1)"
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$SUBNQN" ] || continue
    line="${c##*/}:"
    for a in ctrl_loss_tmo reconnect_delay fast_io_fail_tmo kato queue_count sqsize; do
      [ -e "$c/$a" ] && line="$line $a=$(cat "$c/$a")"
    done
    echo "$line"
  done
}

echo "=== connect both portals"
connect_both
tg_mark connected

fio_pid=""
ck_pid=""

start_io() {
  rm -f "$TG_SHARE/stop-io" /tmp/fio_lat.*.log
  fio --name=ha --filename="$dev" --ioengine="${1:-io_uring}" --direct=1 --rw=randwrite \
      --bs=4k --size="$FIO_SIZE" --iodepth=8 --time_based --runtime=7200 \
      --verify=crc32c --verify_backlog=128 --verify_fatal=1 --rate_iops="$FIO_RATE" \
      --write_lat_log=/tmp/fio --log_unix_epoch=1 >/tmp/fio.out 2>&1 &
  fio_pid=$!
  ck_offset="$CK_OFFSET"
  "$ck" run "$dev" "$CK_OFFSET" "$CK_BLOCKS" "$TG_SHARE/ackcheck.log" "$TG_SHARE/stop-io" \
      /tmp/ackcheck.state "$CK_RATE" >/tmp/ackcheck.out 2>&1 &
  ck_pid=$!
  sleep 1
  io_alive
}

start_ck() {
  rm -f "$TG_SHARE/stop-io"
  ck_offset="${1:-$CK_OFFSET}"
  "$ck" run "$dev" "$ck_offset" "$CK_BLOCKS" "$TG_SHARE/ackcheck.log" "$TG_SHARE/stop-io" \
      /tmp/ackcheck.state "$CK_RATE" >/tmp/ackcheck.out 2>&1 &
  ck_pid=$!
  sleep 1
  io_alive
}

# The kernel's nvme lines, after the guest's uptime and its clock (the
# checker's): maps the lines' uptime stamps to the checker log's times.
kernel_lines() {
  read -r up _ </proc/uptime
  echo "uptime $up now $("$ck" now)"
  dmesg | grep -i nvme
}

io_alive() {
  # fio runs unless only the checker was started (start-ck).
  [ -z "$fio_pid" ] && [ -n "$ck_pid" ] ||
    { [ -n "$fio_pid" ] && kill -0 "$fio_pid" 2>/dev/null; } ||
    { cat /tmp/fio.out; echo "fio is not running"; return 1; }
  [ -n "$ck_pid" ] && kill -0 "$ck_pid" 2>/dev/null || { cat /tmp/ackcheck.out; echo "ackcheck is not running"; return 1; }
  echo "io running"
}

stop_io() {
  status=0
  : >"$TG_SHARE/stop-io"
  if [ -n "$fio_pid" ]; then
    kill -INT "$fio_pid" 2>/dev/null
    wait "$fio_pid"
    echo "fio exit $?"
    grep -E 'err=|verify|error|IOPS' /tmp/fio.out
    grep -q 'err= *0' /tmp/fio.out || { echo "fio reported an error"; cat /tmp/fio.out; status=1; }
    for f in /tmp/fio_lat.*.log; do [ -e "$f" ] && cp "$f" "$TG_SHARE/"; done
  fi
  if [ -n "$ck_pid" ]; then
    wait "$ck_pid"
    rc=$?
    cat /tmp/ackcheck.out
    echo "ackcheck exit $rc"
    [ "$rc" -eq 0 ] || status=1
  fi
  fio_pid=""
  ck_pid=""
  return $status
}

fs_make() {
  mkfs.ext4 -q -F "$dev" || return 1
  mkdir -p /mnt/fs && mount "$dev" /mnt/fs || return 1
  dd if=/dev/urandom of=/mnt/fs/keep bs=65536 count=128 2>/dev/null || return 1
  dd if=/dev/urandom of=/mnt/fs/drop bs=65536 count=256 2>/dev/null || return 1
  sync && rm /mnt/fs/drop && sync || return 1
  fstrim -v /mnt/fs || return 1
  md5sum /mnt/fs/keep >/tmp/fs.md5 && cat /tmp/fs.md5 && umount /mnt/fs
}

fs_check() {
  mount "$dev" /mnt/fs || return 1
  md5sum -c /tmp/fs.md5
  status=$?
  umount /mnt/fs
  return $status
}

n=1
while :; do
  tg_wait_file "$TG_SHARE/cmd-$n" 3600 || tg_fail "no command $n from the host"
  cmd="$(cat "$TG_SHARE/cmd-$n")"
  echo "=== command $n: $cmd"
  case "$cmd" in
    fio-json\ *)
      set -- $cmd
      fio --name="$2" --filename="$dev" --ioengine=io_uring --direct=1 --rw="$3" \
          --bs="$4" --iodepth="$5" --size="$FIO_SIZE" --time_based --runtime="$6" \
          --output-format=json ;;
    paths) paths ;;
    fs-make) fs_make ;;
    fs-check) fs_check ;;
    start-io) start_io ;;
    start-ck|start-ck\ *) start_ck ${cmd#start-ck} ;;
    reconnect|reconnect\ *) reconnect ${cmd#reconnect} ;;
    settings) settings ;;
    dmesg) kernel_lines ;;
    start-io\ *) set -- $cmd; start_io "$2" ;;
    io-alive) io_alive ;;
    stop-io) stop_io ;;
    clock) "$ck" now ;;
    verify) "$ck" verify "$dev" "${ck_offset:-$CK_OFFSET}" "$CK_BLOCKS" /tmp/ackcheck.state ;;
    exit) echo "=== PASS"; tg_mark "done-$n"; exit 0 ;;
    *) echo "unknown command $cmd"; false ;;
  esac >"$TG_SHARE/res-$n" 2>&1
  echo "$?" >"$TG_SHARE/rc-$n"
  cat "$TG_SHARE/res-$n"
  tg_mark "done-$n"
  n=$((n + 1))
done
