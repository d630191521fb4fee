# fio benchmark from the Linux host against an NVMe/TCP target. Connects,
# runs each job of FIO_JOBS ("name:rw:bs:iodepth ...") time-based, writes
# $TG_SHARE/fio-<name>.json, disconnects.
# Env: TARGET_ADDR TARGET_PORT SUBNQN FIO_JOBS [FIO_RUNTIME=10] [FIO_RAMP=2]
#      [FIO_ENGINE=io_uring] [FIO_SIZE=1G] [CONNECT_OPTS]
. /usr/lib/tg/lib.sh
: "${TARGET_ADDR:?}" "${TARGET_PORT:?}" "${SUBNQN:?}" "${FIO_JOBS:?}"
: "${FIO_RUNTIME:=10}" "${FIO_RAMP:=2}" "${FIO_ENGINE:=io_uring}" "${FIO_SIZE:=1G}"

tg_retry 60 sh -c "nvme discover -t tcp -a $TARGET_ADDR -s $TARGET_PORT >/dev/null 2>&1" || tg_fail "target not reachable"
# shellcheck disable=SC2086
dev="$(tg_nvme_connect "$TARGET_ADDR" "$TARGET_PORT" "$SUBNQN" $CONNECT_OPTS)" || tg_fail "nvme connect"
echo "bench: $dev ($(cat /sys/block/${dev#/dev/}/size) sectors), engine $FIO_ENGINE, ${FIO_RUNTIME}s per job"
for spec in $FIO_JOBS; do
  IFS=: read -r name rw bs qd <<EOT
$spec
EOT
  echo "=== $name: rw=$rw bs=$bs iodepth=$qd"
  fio --name="$name" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw="$rw" \
      --bs="$bs" --iodepth="$qd" --size="$FIO_SIZE" --time_based --runtime="$FIO_RUNTIME" \
      --ramp_time="$FIO_RAMP" --randrepeat=0 --norandommap --percentile_list=50:99 \
      --output-format=json --output="$TG_SHARE/fio-$name.json" || tg_fail "fio $name"
done
nvme disconnect -n "$SUBNQN" || tg_fail "nvme disconnect"
echo "=== DONE"
