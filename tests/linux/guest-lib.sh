# Helpers for guest scripts: `. /usr/lib/tg/lib.sh` (busybox sh).

# tg_fail MESSAGE: print and exit 1.
tg_fail() { echo "FAIL: $*"; exit 1; }

# tg_wait_file PATH SECONDS: wait (bounded) until PATH exists, e.g. a signal
# the host drops into the 9p share. Status 1 on timeout.
tg_wait_file() {
  deadline=$(($(cut -d. -f1 /proc/uptime) + $2))
  while [ ! -e "$1" ]; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# tg_retry SECONDS COMMAND...: run COMMAND until it succeeds or SECONDS of
# guest uptime pass (e.g. a target still booting). Status of the last try.
tg_retry() {
  deadline=$(($(cut -d. -f1 /proc/uptime) + $1))
  shift
  while ! "$@"; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

# tg_mark NAME: create $TG_SHARE/NAME, a signal the host can await.
tg_mark() { : >"$TG_SHARE/$1"; sync; }

# tg_nvme_dev SUBNQN: print /dev/nvmeXnY, the (multipath head) namespace
# block device of the connected subsystem SUBNQN. Status 1 if none yet.
tg_nvme_dev() {
  for b in /sys/block/nvme*n*; do
    [ -e "$b" ] || continue
    name="${b##*/}"
    case "$name" in nvme*c*n*) continue ;; esac   # a hidden per-path device
    [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$1" ] && { echo "/dev/$name"; return 0; }
  done
  return 1
}

# tg_nvme_connect ADDR PORT SUBNQN [nvme connect options...]: connect and
# wait (bounded) for the namespace device; prints it.
tg_nvme_connect() {
  a="$1"; p="$2"; n="$3"; shift 3
  nvme connect -t tcp -a "$a" -s "$p" -n "$n" "$@" >&2 || return 1
  tg_retry 20 tg_nvme_dev "$n" >/dev/null || return 1
  tg_nvme_dev "$n"
}
