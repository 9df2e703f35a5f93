#!/usr/bin/env bash
# Builds the images the tests need from Debian packages: no container registry is
# reachable from CI, so nothing is pulled.
#   registry-cache/test-host:trixie   Debian 13 with systemd: the Molecule / local cache host
#   .cache/images/debian-trixie-slim.tar   `docker save` of debian:trixie-slim, loaded into the
#                                      cache host's own Docker to build the registry image
# Each image is built once; delete it (or run with FORCE=1) to rebuild.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
cache="$top/.cache/images"
host_image=registry-cache/test-host:trixie
slim_image=debian:trixie-slim
slim_archive="$cache/debian-trixie-slim.tar"
force=${FORCE:-0}

mkdir -p "$cache"
work=$(mktemp -d /var/tmp/registry-cache-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

# debootstrap + docker import: $1 image name, $2 extra packages, the rest docker import options.
bootstrap() {
    local image=$1 include=$2 rootfs="$work/rootfs"
    shift 2
    rm -rf "$rootfs"
    echo "building $image with debootstrap ($suite)" >&2
    debootstrap --variant=minbase ${include:+--include="$include"} \
        "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        return 1
    }
    # Keep images small and apt usable inside them.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import "$@" - "$image" >/dev/null
}

if [ "$force" = 1 ] || ! docker image inspect "$host_image" >/dev/null 2>&1; then
    bootstrap "$host_image" python3,systemd,systemd-sysv,dbus,ca-certificates,sudo \
        --change 'CMD ["/lib/systemd/systemd"]' --change 'ENV container=docker'
fi

if [ "$force" = 1 ] || ! docker image inspect "$slim_image" >/dev/null 2>&1; then
    bootstrap "$slim_image" ca-certificates --change 'CMD ["bash"]'
fi
if [ "$force" = 1 ] || [ ! -s "$slim_archive" ]; then
    docker save -o "$slim_archive.tmp" "$slim_image"
    mv "$slim_archive.tmp" "$slim_archive"
fi

docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($host_image|$slim_image) "
ls -l "$slim_archive"
