# The stock Linux NVMe/TCP host against an appliance that the host side
# reboots halfway: discover; connect with digests and 2 I/O queues; inspect;
# fio verify (4 KiB and 128 KiB random writes, QD32, crc32c); ext4 with files;
# disconnect; [appliance reboots]; discover, connect without digests, files
# intact, fio verify again; disconnect.
# Marks (host awaits): connected-digests, disconnected-digests, connected-plain.
# Signals (host sends): inspected-digests, appliance-rebooted, inspected-plain.
# Env: TARGET_ADDR TARGET_PORT SUBNQN [DISCOVERY_PORT=8009] [SERIAL]
#      [IO_QUEUES=2] [VERIFY_SIZE=16M] [FIO_ENGINE=io_uring]
. /usr/lib/tg/lib.sh
: "${TARGET_ADDR:?}" "${TARGET_PORT:?}" "${SUBNQN:?}"
: "${DISCOVERY_PORT:=8009}" "${IO_QUEUES:=2}" "${VERIFY_SIZE:=16M}" "${FIO_ENGINE:=io_uring}"

step() { echo "=== $*"; }

# The controller (/dev/nvmeN) of the connected subsystem.
controller() {
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$SUBNQN" ] && { echo "/dev/${c##*/}"; return 0; }
  done
  return 1
}

sysfs_line() {
  c="/sys/class/nvme/${1#/dev/}"
  echo "${1#/dev/}: transport=$(cat "$c/transport") state=$(cat "$c/state") cntlid=$(cat "$c/cntlid") queue_count=$(cat "$c/queue_count") kato=$(cat "$c/kato") address=$(cat "$c/address")"
}

discover() {
  tg_retry 60 sh -c "nvme discover -t tcp -a $TARGET_ADDR -s $DISCOVERY_PORT >/tmp/discovery 2>&1" ||
    { cat /tmp/discovery; tg_fail "nvme discover"; }
  cat /tmp/discovery
  grep -q "subnqn: *$SUBNQN\$" /tmp/discovery || tg_fail "discovery log lacks $SUBNQN"
  grep -q "trsvcid: *$TARGET_PORT\$" /tmp/discovery || tg_fail "discovery log lacks port $TARGET_PORT"
}

# fio_verify NAME BS SIZE: random writes at QD32 with crc32c verify, then a
# second verify-only pass that reads everything back.
fio_verify() {
  fio --name="$1" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw=randwrite \
      --bs="$2" --iodepth=32 --size="$3" --verify=crc32c --do_verify=1 \
      --verify_fatal=1 --group_reporting >/tmp/fio-"$1" 2>&1 || { cat /tmp/fio-"$1"; tg_fail "fio $1 write+verify"; }
  grep -E 'IOPS|err=' /tmp/fio-"$1"
  fio --name="$1" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw=randwrite \
      --bs="$2" --iodepth=32 --size="$3" --verify=crc32c --verify_only \
      --verify_fatal=1 >/tmp/fio-"$1"-read 2>&1 || { cat /tmp/fio-"$1"-read; tg_fail "fio $1 read-back verify"; }
  grep -E 'err=' /tmp/fio-"$1"-read
  echo "fio $1 verified"
}

disconnect() {
  nvme disconnect -n "$SUBNQN" | tee /tmp/disconnect || tg_fail "nvme disconnect"
  grep -q 'disconnected 1 controller' /tmp/disconnect || tg_fail "disconnect did not report 1 controller"
  tg_nvme_dev "$SUBNQN" && tg_fail "$dev still present after disconnect"
  controller >/dev/null && tg_fail "controller still present after disconnect"
  echo "disconnected"
}

step "discover $TARGET_ADDR:$DISCOVERY_PORT"
discover

step "connect -i $IO_QUEUES --hdr-digest --data-digest"
dev="$(tg_nvme_connect "$TARGET_ADDR" "$TARGET_PORT" "$SUBNQN" -i "$IO_QUEUES" --hdr-digest --data-digest)" ||
  tg_fail "nvme connect with digests"
ctrl="$(controller)" || tg_fail "no controller for $SUBNQN"
echo "namespace $dev, controller $ctrl"
sysfs_line "$ctrl"

step "inspect"
nvme list | tee /tmp/list || tg_fail "nvme list"
grep -q "$dev" /tmp/list || tg_fail "nvme list lacks $dev"
[ -z "$SERIAL" ] || grep -q "$SERIAL" /tmp/list || tg_fail "nvme list lacks serial $SERIAL"
nvme id-ctrl "$ctrl" >/tmp/id-ctrl || tg_fail "nvme id-ctrl"
grep -E '^(vid|sn|mn|fr|cntlid|ver|cmic|oaes|ctratt|kas|anatt|anacap|anagrpmax|nanagrpid|mdts|sqes|cqes|maxcmd|nn|vwc|sgls|ioccsz|iorcsz|subnqn|cntrltype) ' /tmp/id-ctrl
nvme id-ns "$dev" >/tmp/id-ns || tg_fail "nvme id-ns"
grep -E '^(nsze|ncap|nuse|nmic|anagrpid|nguid|eui64|flbas|nlbaf)|^lbaf' /tmp/id-ns
nvme ns-descs "$dev" 2>&1 | head -n 6
nvme ana-log "$ctrl" | tee /tmp/ana-log || tg_fail "nvme ana-log"
grep -q '"optimized"\|: optimized\|optimized' /tmp/ana-log || tg_fail "ANA log shows no optimized group"
tg_mark connected-digests
tg_wait_file "$TG_SHARE/inspected-digests" 120 || tg_fail "no inspected-digests signal from the host"

step "fio verify with digests"
fio_verify verify-4k 4k "$VERIFY_SIZE"
fio_verify verify-128k 128k "$VERIFY_SIZE"

step "ext4: mkfs, mount, write files, unmount"
mkfs.ext4 -q -F "$dev" || tg_fail "mkfs.ext4"
mkdir -p /mnt/fs
mount -t ext4 "$dev" /mnt/fs || tg_fail "mount ext4"
i=0
while [ $i -lt 8 ]; do
  dd if=/dev/urandom of=/mnt/fs/file$i bs=64k count=$((i + 1)) 2>/dev/null || tg_fail "write file$i"
  i=$((i + 1))
done
mkdir -p /mnt/fs/dir && cp /tmp/id-ctrl /mnt/fs/dir/id-ctrl
(cd /mnt/fs && md5sum file* dir/id-ctrl >/tmp/sums) || tg_fail "checksums"
umount /mnt/fs || tg_fail "umount"

step "disconnect"
disconnect
tg_mark disconnected-digests
tg_wait_file "$TG_SHARE/appliance-rebooted" 180 || tg_fail "no appliance-rebooted signal from the host"

step "after the appliance rebooted: discover"
discover

step "connect -i $IO_QUEUES (no digests)"
dev="$(tg_nvme_connect "$TARGET_ADDR" "$TARGET_PORT" "$SUBNQN" -i "$IO_QUEUES")" || tg_fail "nvme connect without digests"
ctrl="$(controller)" || tg_fail "no controller for $SUBNQN"
sysfs_line "$ctrl"
tg_mark connected-plain
tg_wait_file "$TG_SHARE/inspected-plain" 120 || tg_fail "no inspected-plain signal from the host"

step "files intact after the appliance rebooted"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 "$dev" /mnt/fs || tg_fail "mount ext4 after reboot"
(cd /mnt/fs && md5sum -c /tmp/sums) || tg_fail "files changed across the appliance reboot"
umount /mnt/fs || tg_fail "umount"
echo "files intact"

step "fio verify without digests"
fio_verify plain-4k 4k 8M
fio_verify plain-128k 128k 8M

step "disconnect"
disconnect
echo "=== PASS"
