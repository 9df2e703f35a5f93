#!/usr/bin/env bash
# Builds the images the tests need from Debian packages: no container registry is
# reachable from CI, so nothing is pulled.
#   registry-cache/test-host:trixie   Debian 13 with systemd: the Molecule / local cache host
#   registry-cache/test-host:trixie-packages   the same with the Debian packages site.yml's
#                                      roles install already there (Molecule hosts that do not
#                                      test a first install: their apt tasks find nothing to do)
#   .cache/images/debian-trixie-slim.tar   `docker save` of debian:trixie-slim, loaded into the
#                                      cache host's own Docker to build the registry image
# Each image is built once; delete it (or run with FORCE=1) to rebuild.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
cache="$top/.cache/images"
host_image=registry-cache/test-host:trixie
packages_image=registry-cache/test-host:trixie-packages
# What the roles install (host: base packages, unattended upgrades, time sync, nftables,
# python3-apt; docker: docker.io, docker-compose and the Python libraries of the
# community.docker modules; storagebox: cifs-utils; registry: python3-bcrypt with
# registry_auth_users), plus the test clients the scenarios' prepare.yml add (skopeo). A
# package the roles gain later and this list lacks is installed by the role: slower, still
# right. Installed with recommends, as the roles' apt tasks do.
packages="ca-certificates curl gnupg jq less unattended-upgrades apt-listchanges
systemd-timesyncd nftables python3-apt docker.io docker-compose python3-requests python3-yaml
cifs-utils python3-bcrypt skopeo"
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

# Rebuilt when the package list or the host image changes: the image carries both as a label.
packages_label="$(docker image inspect -f '{{.Id}}' "$host_image") $(echo $packages)"
if [ "$force" = 1 ] || [ "$(docker image inspect -f '{{index .Config.Labels "registry-cache.packages"}}' \
        "$packages_image" 2>/dev/null)" != "$packages_label" ]; then
    echo "building $packages_image (apt-get install in a build on $host_image)" >&2
    printf '%s\n' "FROM $host_image" \
        "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(echo $packages) \\" \
        "    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb" \
        "LABEL registry-cache.packages=\"$packages_label\"" |
        docker build -q -t "$packages_image" - >"$work/build.log" 2>&1 || {
        tail -n 30 "$work/build.log" >&2
        exit 1
    }
fi

if [ "$force" = 1 ] || ! docker image inspect "$slim_image" >/dev/null 2>&1; then
    bootstrap "$slim_image" ca-certificates --change 'CMD ["bash"]'
fi
if [ "$force" = 1 ] || [ ! -s "$slim_archive" ]; then
    docker save -o "$slim_archive.tmp" "$slim_image"
    mv "$slim_archive.tmp" "$slim_archive"
fi

docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($host_image|$packages_image|$slim_image) "
ls -l "$slim_archive"
