#!/bin/sh
# /init of the Linux test guest (busybox sh). Built into the initramfs by
# tests/linux/build-guest.sh; docs/linux-guest.md describes the contract.
#
# Kernel command line keys read here (all optional):
#   tg.ipN=ADDR/PREFIX   address of ethN (N = 0..7), link brought up
#   tg.mtuN=BYTES        MTU of ethN
#   tg.hostnqn=NQN       host NQN written to /etc/nvme/hostnqn (default: from a fresh UUID)
#   tg.hostid=UUID       host ID written to /etc/nvme/hostid (default: that UUID)
#   MODULE.PARAM=VALUE   passed to insmod of MODULE (insmod ignores the command
#                        line); default nvme_core.multipath=Y
# Then: mounts the 9p share `host0` at /mnt/host, sources /mnt/host/env.sh if
# present, runs /mnt/host/script.sh with its output in /mnt/host/output.log
# (and on the console), writes its exit status to /mnt/host/status, powers off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export LD_LIBRARY_PATH="$(tr '\n' ':' </etc/ld-library-path)"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1

say() { echo "tg-init: $*"; }
halt() { say "$*"; sync; poweroff -f; sleep 10; }

CMDLINE="$(cat /proc/cmdline)"
# Value of kernel command line key $1; status 1 when absent.
param() {
  for word in $CMDLINE; do
    case "$word" in "$1"=*) echo "${word#*=}"; return 0 ;; esac
  done
  return 1
}
# insmod arguments for module $1 from MODULE.PARAM=VALUE words ('-' == '_').
module_args() {
  want="$(echo "$1" | tr - _)"
  args=""
  for word in $CMDLINE; do
    case "$word" in
      *.*=*)
        mod="$(echo "${word%%.*}" | tr - _)"
        [ "$mod" = "$want" ] && args="$args ${word#*.}"
        ;;
    esac
  done
  if [ "$want" = nvme_core ] && ! param nvme_core.multipath >/dev/null; then
    args="$args multipath=Y"
  fi
  echo "$args"
}

say "uptime $(cut -d' ' -f1 /proc/uptime) s: loading modules"
for mod in $(cat /lib/modules/load-order); do
  # shellcheck disable=SC2046
  insmod "/lib/modules/$mod.ko" $(module_args "$mod") || halt "insmod $mod failed"
done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs configfs /sys/kernel/config

ip link set lo up
i=0
while [ $i -lt 8 ]; do
  addr="$(param tg.ip$i)"
  if [ -n "$addr" ]; then
    # virtio_net probes while insmod runs, but give udev-less naming a moment.
    n=0
    while [ ! -e /sys/class/net/eth$i ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    [ -e /sys/class/net/eth$i ] || halt "tg.ip$i given but eth$i does not exist"
    mtu="$(param tg.mtu$i)" && ip link set eth$i mtu "$mtu"
    ip link set eth$i up
    ip addr add "$addr" dev eth$i || halt "cannot set $addr on eth$i"
  fi
  i=$((i + 1))
done

uuid="$(param tg.hostid || cat /proc/sys/kernel/random/uuid)"
mkdir -p /etc/nvme
echo "$uuid" >/etc/nvme/hostid
param tg.hostnqn >/etc/nvme/hostnqn || echo "nqn.2014-08.org.nvmexpress:uuid:$uuid" >/etc/nvme/hostnqn

mkdir -p /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt/host ||
  halt "cannot mount the 9p share host0"
say "uptime $(cut -d' ' -f1 /proc/uptime) s: ready, running /mnt/host/script.sh"

export TG_SHARE=/mnt/host
[ -f /mnt/host/env.sh ] && . /mnt/host/env.sh
if [ -f /mnt/host/script.sh ]; then
  cd /tmp
  { sh /mnt/host/script.sh; echo $? >/tmp/status; } 2>&1 | tee /mnt/host/output.log
  status="$(cat /tmp/status)"
else
  echo "no /mnt/host/script.sh" >/mnt/host/output.log
  status=127
fi
cd /
echo "$status" >/mnt/host/status
sync
umount /mnt/host
halt "script exited with status $status; powering off"
