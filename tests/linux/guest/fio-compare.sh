# fio benchmark against several NVMe/TCP targets in one run: connects to all
# of them, then runs each job of FIO_JOBS against every target in turn (the
# order alternating from job to job), so that the machine's load drifts
# alike for all. Writes $TG_SHARE/fio-<target>-<job>.json, disconnects.
# Env: TARGETS ("name,addr,port,subnqn ...") FIO_JOBS ("name:rw:bs:iodepth ...")
#      [FIO_RUNTIME=10] [FIO_RAMP=2] [FIO_ENGINE=io_uring] [FIO_SIZE=1G]
. /usr/lib/tg/lib.sh
: "${TARGETS:?}" "${FIO_JOBS:?}"
: "${FIO_RUNTIME:=10}" "${FIO_RAMP:=2}" "${FIO_ENGINE:=io_uring}" "${FIO_SIZE:=1G}"

names=""
for t in $TARGETS; do
  IFS=, read -r name addr port nqn <<EOT
$t
EOT
  tg_retry 60 sh -c "nvme discover -t tcp -a $addr -s $port >/dev/null 2>&1" || tg_fail "$name ($addr:$port) not reachable"
  dev="$(tg_nvme_connect "$addr" "$port" "$nqn")" || tg_fail "nvme connect $name"
  echo "bench: $name = $dev ($(cat /sys/block/${dev#/dev/}/size) sectors) at $addr:$port"
  eval "dev_$name=$dev"
  eval "nqn_$name=$nqn"
  names="$names $name"
done
reversed=""
for n in $names; do reversed="$n $reversed"; done
echo "bench: engine $FIO_ENGINE, ${FIO_RUNTIME}s per job and target"

turn=0
for spec in $FIO_JOBS; do
  IFS=: read -r job rw bs qd <<EOT
$spec
EOT
  if [ $((turn % 2)) -eq 0 ]; then order="$names"; else order="$reversed"; fi
  turn=$((turn + 1))
  for name in $order; do
    eval "dev=\$dev_$name"
    echo "=== $job on $name: rw=$rw bs=$bs iodepth=$qd"
    fio --name="$job" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw="$rw" \
        --bs="$bs" --iodepth="$qd" --size="$FIO_SIZE" --time_based --runtime="$FIO_RUNTIME" \
        --ramp_time="$FIO_RAMP" --randrepeat=0 --norandommap --percentile_list=50:99 \
        --output-format=json --output="$TG_SHARE/fio-$name-$job.json" || tg_fail "fio $job on $name"
  done
done
for name in $names; do
  eval "nqn=\$nqn_$name"
  nvme disconnect -n "$nqn" || tg_fail "nvme disconnect $name"
done
echo "=== DONE"
