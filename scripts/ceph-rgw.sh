#!/usr/bin/env bash
# A throwaway S3 store for tests and benchmarks: Ceph's RADOS Gateway on a single-node cluster
# (one mon, one memstore OSD, pools of size 1, `auth none`), all on 127.0.0.1 with OS-chosen
# ports, all state under DIR. Needs the Debian packages ceph-mon, ceph-osd and radosgw
# (scripts/apt-packages.txt); runs as root or not, never through systemd.
#
#   scripts/ceph-rgw.sh start DIR      start everything; prints DIR/env (the endpoint and keys)
#   scripts/ceph-rgw.sh stop DIR       stop what DIR/pids names (rgw, osd, mon), wipe nothing
#   scripts/ceph-rgw.sh stop-rgw DIR   stop the gateway only (an outage: mon and osd keep running)
#   scripts/ceph-rgw.sh start-rgw DIR  start the gateway again on the same port
#
# DIR/env holds shell assignments: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION, AWS_ALLOW_HTTP, and RGW_BUCKETS (made at start, default "backups"). The PIDs are in DIR/pids ("name pid" lines).
set -euo pipefail

usage() { echo "usage: $0 start|stop|stop-rgw|start-rgw DIR" >&2; exit 2; }
(($# == 2)) || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/ceph.conf
: "${RGW_MEMSTORE_BYTES:=$((3 << 30))}"  # RAM the OSD may fill (allocated only as written)
: "${RGW_START_TIMEOUT:=90}"
: "${RGW_BUCKETS:=backups}"  # buckets made empty at start (space-separated)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

record() { echo "$1 $2" >>"$dir/pids"; }

pid_of() { awk -v n="$1" '$1==n {p=$2} END {print p}' "$dir/pids" 2>/dev/null; }

stop_one() {  # name: TERM, wait up to 10 s, then KILL
  local pid
  pid=$(pid_of "$1")
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

wait_for() {  # description, command...: retry for RGW_START_TIMEOUT seconds
  local what=$1
  shift
  local deadline=$((SECONDS + RGW_START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "ceph-rgw: timed out waiting for $what (logs in $dir/log)" >&2
      exit 1
    fi
    sleep 0.2
  done
}

failed_start() {  # a start that fails shows why and leaves no process behind
  local log
  for log in "$dir"/log/*.out "$dir"/log/mon.a.log "$dir"/log/osd.0.log "$dir"/log/client.rgw.log; do
    [[ -s $log ]] && { echo "== $log" >&2; tail -n 15 "$log" >&2; }
  done
  stop_one rgw
  stop_one osd
  stop_one mon
}

ceph_cli() { ceph -c "$conf" --connect-timeout 5 "$@"; }

start_rgw() {
  local port
  port=$(cat "$dir/rgw.port")
  setsid radosgw -f -c "$conf" -n client.rgw \
    --rgw-frontends "beast endpoint=127.0.0.1:$port tcp_nodelay=1" </dev/null >>"$dir/log/rgw.out" 2>&1 &
  record rgw $!
  wait_for "the gateway on port $port" curl -sf -o /dev/null "http://127.0.0.1:$port/"
}

start() {
  if [[ -s $dir/pids ]] && kill -0 "$(pid_of mon)" 2>/dev/null; then
    echo "ceph-rgw: already running in $dir (stop it first)" >&2
    exit 1
  fi
  rm -rf "$dir/mon" "$dir/osd0" "$dir/run" "$dir/log" "$dir/pids" "$dir/env"
  mkdir -p "$dir/mon" "$dir/osd0" "$dir/run" "$dir/log"
  local fsid mon_port rgw_port osd_uuid
  fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  mon_port=$(free_port)
  rgw_port=$(free_port)
  echo "$rgw_port" >"$dir/rgw.port"
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc secure
ms client mode = crc secure
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
debug ms = 0
[mon]
mon data = $dir/mon
mon cluster log file = $dir/log/cluster.log
[osd]
osd data = $dir/osd0
osd objectstore = memstore
memstore device bytes = $RGW_MEMSTORE_BYTES
osd max object name len = 460
osd max object namespace len = 64
[client.rgw]
rgw data = $dir/run/rgw
rgw dns name = 127.0.0.1
rgw thread pool size = 64
rgw enable usage log = false
EOF
  monmaptool --create --clobber --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" \
    "$dir/monmap" >/dev/null
  ceph-mon --mkfs -c "$conf" -i a --monmap "$dir/monmap" >/dev/null 2>"$dir/log/mon-mkfs.out"
  setsid ceph-mon -f -c "$conf" -i a </dev/null >>"$dir/log/mon.out" 2>&1 &
  record mon $!
  wait_for "the monitor on port $mon_port" ceph_cli mon stat
  ceph_cli osd new "$osd_uuid" 0 >/dev/null
  ceph-osd --mkfs -c "$conf" -i 0 --osd-uuid "$osd_uuid" >/dev/null 2>"$dir/log/osd-mkfs.out"
  setsid ceph-osd -f -c "$conf" -i 0 </dev/null >>"$dir/log/osd.out" 2>&1 &
  record osd $!
  wait_for "the OSD to come up" bash -c "ceph -c '$conf' --connect-timeout 5 osd dump \
    | grep -q '^osd.0 up'"
  mkdir -p "$dir/run/rgw"
  start_rgw
  local access secret
  access=$(python3 -c 'import secrets; print(secrets.token_hex(10).upper())')
  secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')
  radosgw-admin -c "$conf" -n client.rgw user create --uid=tests --display-name=tests \
    --access-key="$access" --secret="$secret" >/dev/null 2>>"$dir/log/admin.out"
  local bucket
  for bucket in $RGW_BUCKETS; do  # SigV4-signed PUT; the empty body's SHA-256 is required
    curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access:$secret" -X PUT \
      -H "x-amz-content-sha256: $(printf '' | sha256sum | cut -d' ' -f1)" \
      "http://127.0.0.1:$rgw_port/$bucket" >/dev/null
  done
  cat >"$dir/env" <<EOF
AWS_ENDPOINT_URL=http://127.0.0.1:$rgw_port
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
AWS_ALLOW_HTTP=true
RGW_BUCKETS="$RGW_BUCKETS"
EOF
  cat "$dir/env"
}

case $cmd in
  start)
    trap 'failed_start' EXIT
    start
    trap - EXIT
    ;;
  stop)
    stop_one rgw
    stop_one osd
    stop_one mon
    ;;
  stop-rgw) stop_one rgw ;;
  start-rgw) start_rgw ;;
  *) usage ;;
esac
