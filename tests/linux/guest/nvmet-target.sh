# Linux's own NVMe/TCP target (nvmet-tcp) on /dev/vda, configured through
# configfs; the reference tandem is compared with. Runs until the host
# signals `stop` (or NVMET_LIFETIME seconds pass).
# Env: NVMET_NQN NVMET_ADDR NVMET_PORT [NVMET_DEVICE=/dev/vda]
#      [NVMET_ANA_STATE=optimized] [NVMET_SERIAL] [NVMET_LIFETIME=600]
. /usr/lib/tg/lib.sh
set -e
: "${NVMET_NQN:?}" "${NVMET_ADDR:?}" "${NVMET_PORT:=4420}"
: "${NVMET_DEVICE:=/dev/vda}" "${NVMET_ANA_STATE:=optimized}" "${NVMET_LIFETIME:=600}"
[ -b "$NVMET_DEVICE" ] || tg_fail "no block device $NVMET_DEVICE"

cfg=/sys/kernel/config/nvmet
sub="$cfg/subsystems/$NVMET_NQN"
mkdir "$sub"
echo 1 >"$sub/attr_allow_any_host"
[ -n "$NVMET_SERIAL" ] && echo "$NVMET_SERIAL" >"$sub/attr_serial"
mkdir "$sub/namespaces/1"
echo "$NVMET_DEVICE" >"$sub/namespaces/1/device_path"
echo 1 >"$sub/namespaces/1/ana_grpid"
echo 1 >"$sub/namespaces/1/enable"

port="$cfg/ports/1"
mkdir "$port"
echo tcp >"$port/addr_trtype"
echo ipv4 >"$port/addr_adrfam"
echo "$NVMET_ADDR" >"$port/addr_traddr"
echo "$NVMET_PORT" >"$port/addr_trsvcid"
# ANA group 1 exists on every port; state it explicitly.
echo "$NVMET_ANA_STATE" >"$port/ana_groups/1/ana_state"
ln -s "$sub" "$port/subsystems/$NVMET_NQN"
set +e

echo "nvmet: $NVMET_NQN on $NVMET_ADDR:$NVMET_PORT, namespace 1 = $NVMET_DEVICE ($(cat /sys/block/${NVMET_DEVICE##*/}/size) sectors), ANA group 1 $NVMET_ANA_STATE"
tg_mark ready
if tg_wait_file "$TG_SHARE/stop" "$NVMET_LIFETIME"; then
  echo "nvmet: stop signal"
else
  echo "nvmet: no stop signal within $NVMET_LIFETIME s"
fi
