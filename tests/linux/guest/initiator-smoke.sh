# The stock Linux NVMe/TCP host against a target: discover, connect, inspect,
# fio verify (write then read back), ext4 (mkfs, files, remount, check),
# disconnect. Fails loudly at the first
# step that goes wrong.
# Env: TARGET_ADDR TARGET_PORT SUBNQN [CONNECT_OPTS] [VERIFY_SIZE=32M] [FS_CHECK=1]
#      [DISCOVERY_PORT=TARGET_PORT] [FIO_ENGINE=io_uring]
. /usr/lib/tg/lib.sh
: "${TARGET_ADDR:?}" "${TARGET_PORT:?}" "${SUBNQN:?}"
: "${VERIFY_SIZE:=32M}" "${DISCOVERY_PORT:=$TARGET_PORT}" "${FIO_ENGINE:=io_uring}"

step() { echo "=== $*"; }

step "discover $TARGET_ADDR:$DISCOVERY_PORT"
tg_retry 60 sh -c "nvme discover -t tcp -a $TARGET_ADDR -s $DISCOVERY_PORT >/tmp/discovery 2>&1" ||
  { cat /tmp/discovery; tg_fail "nvme discover"; }
cat /tmp/discovery
grep -q "subnqn: *$SUBNQN\$" /tmp/discovery || tg_fail "discovery log lacks $SUBNQN"

step "connect $SUBNQN $CONNECT_OPTS"
# shellcheck disable=SC2086
dev="$(tg_nvme_connect "$TARGET_ADDR" "$TARGET_PORT" "$SUBNQN" $CONNECT_OPTS)" || tg_fail "nvme connect"
ctrl=""
for c in /sys/class/nvme/nvme*; do
  [ "$(cat "$c/subsysnqn")" = "$SUBNQN" ] && { ctrl="/dev/${c##*/}"; break; }
done
[ -n "$ctrl" ] || tg_fail "no controller for $SUBNQN"
echo "namespace $dev, controller $ctrl"

step "inspect"
nvme list || tg_fail "nvme list"
nvme id-ctrl "$ctrl" >/tmp/id-ctrl || tg_fail "nvme id-ctrl"
grep -E '^(mn|sn|cntlid|cmic|anacap|anagrpmax|nanagrpid|kas|mdts|subnqn) ' /tmp/id-ctrl
nvme id-ns "$dev" | head -n 12 || tg_fail "nvme id-ns"
nvme ana-log "$ctrl" | tee /tmp/ana-log || tg_fail "nvme ana-log"
grep -q 'optimized' /tmp/ana-log || tg_fail "ANA log shows no optimized group"
for c in /sys/class/nvme/nvme*; do
  echo "$(basename "$c"): transport=$(cat "$c/transport") state=$(cat "$c/state") cntlid=$(cat "$c/cntlid") queue_count=$(cat "$c/queue_count" 2>/dev/null) kato=$(cat "$c/kato" 2>/dev/null) address=$(cat "$c/address")"
done

step "fio verify: 4k random writes QD32, then read back"
fio --name=verify --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw=randwrite \
    --bs=4k --iodepth=32 --size="$VERIFY_SIZE" --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --group_reporting >/tmp/fio-write 2>&1 || { cat /tmp/fio-write; tg_fail "fio write+verify"; }
grep -E 'IOPS|err=' /tmp/fio-write
fio --name=verify --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw=randwrite \
    --bs=4k --iodepth=32 --size="$VERIFY_SIZE" --verify=crc32c --verify_only \
    --verify_fatal=1 >/tmp/fio-read 2>&1 || { cat /tmp/fio-read; tg_fail "fio read-back verify"; }
grep -E 'IOPS|err=|verify' /tmp/fio-read | head -n 5

if [ "${FS_CHECK:-1}" = 1 ]; then
  step "ext4: mkfs, mount, write, remount, check"
  mkfs.ext4 -q -F "$dev" || tg_fail "mkfs.ext4"
  mkdir -p /mnt/fs
  mount -t ext4 "$dev" /mnt/fs || tg_fail "mount ext4"
  i=0
  while [ $i -lt 8 ]; do
    dd if=/dev/urandom of=/mnt/fs/file$i bs=64k count=4 2>/dev/null || tg_fail "write file$i"
    i=$((i + 1))
  done
  (cd /mnt/fs && md5sum file* >/tmp/sums)
  umount /mnt/fs || tg_fail "umount"
  echo 3 >/proc/sys/vm/drop_caches
  mount -t ext4 "$dev" /mnt/fs || tg_fail "remount ext4"
  (cd /mnt/fs && md5sum -c /tmp/sums) | tail -n 2 || tg_fail "files changed across remount"
  umount /mnt/fs || tg_fail "umount"
  echo "ext4 ok"
fi

step "disconnect"
nvme disconnect -n "$SUBNQN" | tee /tmp/disconnect || tg_fail "nvme disconnect"
grep -q 'disconnected 1 controller' /tmp/disconnect || tg_fail "disconnect did not report 1 controller"
tg_nvme_dev "$SUBNQN" && tg_fail "$dev still present after disconnect"
echo "=== PASS"
