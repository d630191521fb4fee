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
