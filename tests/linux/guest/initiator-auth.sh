# NVMe in-band authentication (DH-HMAC-CHAP) from the stock Linux host against
# a target that requires it of host HOSTNQN: refused without a secret and with
# a wrong one; connects with the right one (fio verify, disconnect); with the
# controller's secret too (bidirectional) it connects, and with a wrong
# controller secret the host itself refuses the target. Needs Linux >= 6.x
# with CONFIG_NVME_AUTH (the Debian 13 guest).
# Env: TARGET_ADDR TARGET_PORT SUBNQN HOSTNQN HOST_SECRET WRONG_SECRET
#      [CTRL_SECRET WRONG_CTRL_SECRET] [VERIFY_SIZE=16M] [FIO_ENGINE=io_uring]
. /usr/lib/tg/lib.sh
: "${TARGET_ADDR:?}" "${TARGET_PORT:?}" "${SUBNQN:?}" "${HOSTNQN:?}"
: "${HOST_SECRET:?}" "${WRONG_SECRET:?}" "${VERIFY_SIZE:=16M}" "${FIO_ENGINE:=io_uring}"

step() { echo "=== $*"; }
# connect_must_fail LABEL [options...]: nvme connect is refused and leaves no
# controller behind.
connect_must_fail() {
  label="$1"; shift
  if nvme connect -t tcp -a "$TARGET_ADDR" -s "$TARGET_PORT" -n "$SUBNQN" --hostnqn "$HOSTNQN" "$@" >/tmp/connect 2>&1; then
    cat /tmp/connect
    tg_fail "$label: nvme connect succeeded"
  fi
  echo "$label: refused: $(tr '\n' ' ' </tmp/connect)"
  tg_nvme_dev "$SUBNQN" >/dev/null && tg_fail "$label: a namespace appeared"
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c" ] && [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$SUBNQN" ] && tg_fail "$label: controller ${c##*/} left behind"
  done
  return 0
}
# connect_verify LABEL [options...]: connects, checks fio verify, disconnects.
connect_verify() {
  label="$1"; shift
  dev="$(tg_nvme_connect "$TARGET_ADDR" "$TARGET_PORT" "$SUBNQN" --hostnqn "$HOSTNQN" "$@")" ||
    tg_fail "$label: nvme connect"
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$SUBNQN" ] &&
      echo "$label: $(basename "$c") state=$(cat "$c/state") queue_count=$(cat "$c/queue_count" 2>/dev/null)"
  done
  fio --name=verify --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw=randwrite \
      --bs=4k --iodepth=16 --size="$VERIFY_SIZE" --verify=crc32c --do_verify=1 \
      --verify_fatal=1 --group_reporting >/tmp/fio 2>&1 || { cat /tmp/fio; tg_fail "$label: fio verify"; }
  grep -E 'err=' /tmp/fio
  nvme disconnect -n "$SUBNQN" | grep -q 'disconnected 1 controller' || tg_fail "$label: disconnect"
  echo "$label: ok"
}

step "wait for the target"
tg_retry 60 sh -c "nvme discover -t tcp -a $TARGET_ADDR -s $TARGET_PORT --hostnqn $HOSTNQN >/tmp/discovery 2>&1" ||
  { cat /tmp/discovery; tg_fail "nvme discover"; }
[ -e /sys/module/nvme_auth ] || tg_fail "this kernel has no nvme_auth module"

step "no secret"
connect_must_fail "no secret"
step "wrong secret"
connect_must_fail "wrong secret" --dhchap-secret "$WRONG_SECRET"
step "right secret"
connect_verify "right secret" --dhchap-secret "$HOST_SECRET"
if [ -n "$CTRL_SECRET" ]; then
  step "bidirectional"
  connect_verify "bidirectional" --dhchap-secret "$HOST_SECRET" --dhchap-ctrl-secret "$CTRL_SECRET"
  step "wrong controller secret"
  connect_must_fail "wrong controller secret" --dhchap-secret "$HOST_SECRET" --dhchap-ctrl-secret "$WRONG_CTRL_SECRET"
fi
echo "=== PASS"
