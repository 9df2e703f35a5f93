#!/usr/bin/env bash
# Installs what the bundle's commands need on a Debian/Ubuntu workstation or CI VM and
# starts the Docker engine if it is not running. Safe to run again: it only installs
# what is missing. Needs root (or sudo).
#   scripts/host-deps.sh          everything the tests and benchmarks use (make deps, CI)
#   scripts/host-deps.sh --up     only what a local cache host needs (make up)
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive

# command -> Debian package that provides it. A local cache host (make up): the engine,
# debootstrap for its image, make and git.
declare -A wanted=(
    [dockerd]=docker.io [debootstrap]=debootstrap [make]=make [git]=git
)
if [ "${1:-}" != --up ]; then
    wanted+=(
        [docker-registry]=docker-registry [skopeo]=skopeo [npm]=npm [ip]=iproute2
        [strace]=strace [fusermount3]=fuse3 [/usr/bin/time]=time
        # The SMB tests: a real Samba server on loopback, mounted with rclone (FUSE).
        [/usr/sbin/smbd]=samba [rclone]=rclone
        # The S3 tests: Ceph's RADOS Gateway on loopback, and libfaketime to date its objects.
        [ceph-mon]=ceph-mon [ceph-osd]=ceph-osd [radosgw]=radosgw [radosgw-admin]=ceph-common
        [ceph]=ceph-common [faketime]=faketime
        # molecule/vm: a QEMU guest (TCG) with its own kernel, reached over SSH.
        [qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils [ssh]=openssh-client
        [mkfs.ext4]=e2fsprogs
        # The HTML report's test renders it in headless Chromium (--dump-dom, --screenshot).
        [chromium]=chromium
    )
fi
missing=()
for cmd in "${!wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends ca-certificates "${missing[@]}" >/dev/null
    # Debian enables and starts the system's smbd (port 445, every interface) with the
    # package; the tests run their own on loopback. Stop it where this script installed it.
    if [[ " ${missing[*]} " == *" samba "* ]] && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now smbd nmbd >/dev/null 2>&1 || true
    fi
fi

# promtool for `make lint` (the alert rules and their tests), taken out of Debian's
# prometheus package without installing the server.
[ "${1:-}" = --up ] || "$(dirname "$0")/install-promtool.sh" >/dev/null

if ! $sudo docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        $sudo systemctl start docker
    else
        # No systemd as PID 1 (CI VMs, containers): run the engine in the background.
        $sudo sh -c 'dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 60); do $sudo docker info >/dev/null 2>&1 && break; sleep 1; done
fi
$sudo docker info --format 'docker engine {{.ServerVersion}} ({{.Driver}}) is running' || {
    echo "the Docker engine did not start: see /var/log/dockerd.log" >&2
    exit 1
}
