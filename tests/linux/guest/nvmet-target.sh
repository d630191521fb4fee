# Linux's own NVMe/TCP target (nvmet-tcp) on /dev/vda, configured through
# configfs; the reference tandem is compared with. Runs until the host
# signals `stop` (or NVMET_LIFETIME seconds pass).
# Env: NVMET_NQN NVMET_ADDR NVMET_PORT [NVMET_DEVICE=/dev/vda]
#      [NVMET_ANA_STATE=optimized] [NVMET_SERIAL] [NVMET_LIFETIME=600]
#      [NVMET_HOSTNQN NVMET_DHCHAP_KEY [NVMET_DHCHAP_CTRL_KEY]
#       [NVMET_DHCHAP_HASH=hmac(sha256)] [NVMET_DHCHAP_DHGROUP=null]]:
#      only that host may connect, and it must authenticate (DH-HMAC-CHAP)
. /usr/lib/tg/lib.sh
set -e
: "${NVMET_NQN:?}" "${NVMET_ADDR:?}" "${NVMET_PORT:=4420}"
: "${NVMET_DEVICE:=/dev/vda}" "${NVMET_ANA_STATE:=optimized}" "${NVMET_LIFETIME:=600}"
[ -b "$NVMET_DEVICE" ] || tg_fail "no block device $NVMET_DEVICE"

cfg=/sys/kernel/config/nvmet
sub="$cfg/subsystems/$NVMET_NQN"
mkdir "$sub"
if [ -n "$NVMET_HOSTNQN" ]; then
  echo 0 >"$sub/attr_allow_any_host"
  host="$cfg/hosts/$NVMET_HOSTNQN"
  mkdir "$host"
  echo "$NVMET_DHCHAP_KEY" >"$host/dhchap_key"
  [ -n "$NVMET_DHCHAP_CTRL_KEY" ] && echo "$NVMET_DHCHAP_CTRL_KEY" >"$host/dhchap_ctrl_key"
  echo "${NVMET_DHCHAP_HASH:-hmac(sha256)}" >"$host/dhchap_hash"
  echo "${NVMET_DHCHAP_DHGROUP:-null}" >"$host/dhchap_dhgroup"
  ln -s "$host" "$sub/allowed_hosts/$NVMET_HOSTNQN"
  echo "nvmet: host $NVMET_HOSTNQN must authenticate ($(cat "$host/dhchap_hash"), $(cat "$host/dhchap_dhgroup")$([ -n "$NVMET_DHCHAP_CTRL_KEY" ] && echo ", bidirectional"))"
else
  echo 1 >"$sub/attr_allow_any_host"
fi
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
