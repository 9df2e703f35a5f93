#!/bin/sh
# The scenario's S3 server: Ceph's RADOS Gateway from Debian's packages, single node, in the
# gateway container (no systemd there: the daemons fork into the background and leave pid
# files). One monitor, one OSD keeping its data in memory, pool size 1, no cephx, radosgw
# with the beast frontend on port 7480 of every address, so the registry containers inside
# the cache hosts reach it through the test network. Same settings and pitfalls as
# files/janitor/tests/rgw.py (`ms mon client mode = crc`, `tcp_nodelay=1`).
#   gateway.sh setup BUCKET ACCESS_KEY SECRET_FILE   the cluster, user and bucket
#   gateway.sh stop-rgw | start-rgw      the S3 endpoint alone goes down / comes back
set -eu
W=/var/lib/molecule-rgw
CONF=$W/ceph.conf
PORT=7480

# Up to 180 s: radosgw creates its pools at the first start, slow on a loaded machine.
wait_port() {
    deadline=$(($(date +%s) + 180))
    while ! python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; do
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "radosgw did not answer in 180 s; its log ends:" >&2
            tail -n 20 "$W/log/client.rgw.log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

case "$1" in
setup)
    bucket=$2 access=$3
    secret=$(cat "$4")
    if [ -e "$W/ready" ]; then
        exit 0
    fi
    mkdir -p "$W/run" "$W/log" "$W/mon" "$W/osd" "$W/rgw"
    cat > "$CONF" <<EOF
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = 127.0.0.1:6789
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = $W/run
log file = $W/log/\$name.log
pid file = $W/run/\$name.pid
admin socket = $W/run/\$name.asok
mon data = $W/mon
osd data = $W/osd
osd objectstore = memstore
memstore device bytes = 1073741824
[client.rgw]
rgw frontends = beast endpoint=0.0.0.0:$PORT tcp_nodelay=1
rgw data = $W/rgw
rgw enable usage log = false
rgw gc obj min wait = 60
rgw gc processor period = 60
EOF
    ceph-mon --mkfs -i a --mon-data "$W/mon" -c "$CONF"
    ceph-mon -i a -c "$CONF"
    ceph osd create -c "$CONF" >/dev/null
    ceph-osd -i 0 --mkfs -c "$CONF" 2>/dev/null
    # With auth none the OSD can send its first monitor command before the monitor's map
    # reached it, with the wrong cluster fsid; it then exits ("mon_cmd_maybe_osd_create fail:
    # 'wrong fsid'", 4 starts in 15 here). A second start finds the map.
    tries=1
    until ceph-osd -i 0 -c "$CONF"; do
        [ "$tries" -lt 5 ] || exit 1
        tries=$((tries + 1))
        sleep 1
    done
    radosgw -n client.rgw -c "$CONF"
    wait_port
    radosgw-admin user create --uid registry-cache --display-name "registry-cache molecule" \
        --access-key "$access" --secret-key "$secret" -c "$CONF" >/dev/null
    # The registry does not create its bucket.
    S3_SECRET=$secret python3 - "$bucket" "$access" <<'PY'
import os, sys
import boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:7480", region_name="us-east-1",
                  aws_access_key_id=sys.argv[2], aws_secret_access_key=os.environ["S3_SECRET"])
s3.create_bucket(Bucket=sys.argv[1])
PY
    touch "$W/ready"
    ;;
stop-rgw)
    pid=$(cat "$W/run/client.rgw.pid")
    kill "$pid"
    # Until it is gone or a zombie: PID 1 here (sleep) reaps no children.
    while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
        sleep 0.2
    done
    ;;
start-rgw)
    radosgw -n client.rgw -c "$CONF"
    wait_port
    ;;
*)
    echo "usage: $0 setup BUCKET ACCESS_KEY | stop-rgw | start-rgw" >&2
    exit 2
    ;;
esac
