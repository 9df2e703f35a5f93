#!/usr/bin/env bash
# Builds the disk of the Debian 13 guest that molecule/vm boots under QEMU, natively with
# debootstrap: every package site.yml's roles install is already there, so the emulated
# guest (TCG, no KVM) only configures. Output, cached by this script's content:
#   .cache/vm/<hash>/root.img      raw ext4 root filesystem (sparse, 10 GiB); the scenario
#                                  boots a copy-on-write overlay of it, never the file itself
#   .cache/vm/<hash>/vmlinuz, initrd.img   the guest's kernel, booted with -kernel/-initrd
#   .cache/vm/<hash>/id_ed25519    the key of the guest's sudo user `molecule` (made here,
#                                  for the tests only)
#   .cache/vm/current -> <hash>    what the scenario boots
# A rerun with the same script content finds the result and stops (FORCE=1 rebuilds). The
# registry image is not in here: the scenario attaches the archive that make registry-image
# saves as a second disk and loads it in the guest (molecule/vm/prepare.yml).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
hash=$(sha256sum "$0" | cut -c1-16)
out="$top/.cache/vm/$hash"
force=${FORCE:-0}
user=molecule
# First step, with debootstrap: a bootable system with SSH, sudo and Python for Ansible, and
# what the kernel's CIFS client needs (cifs-utils, keyutils).
base="linux-image-amd64,initramfs-tools,systemd-sysv,udev,dbus,iproute2,openssh-server,sudo,python3,
cifs-utils,keyutils,ca-certificates,iptables,kmod,procps,less"
# Second step, apt-get install in a chroot (some of these fail to configure under
# debootstrap): what the roles install, as in scripts/build-test-images.sh (host: base
# packages, unattended upgrades, time sync, nftables, python3-apt; docker: docker.io,
# docker-compose and the Python libraries of the community.docker modules; storagebox:
# cifs-utils; registry: python3-bcrypt, logrotate for its log), plus the tests' tools in the
# guest (skopeo, tc for netem delays). The guest has no route to a Debian mirror, so a
# package the roles gain and this list lacks fails the scenario's converge: add it here.
packages="ca-certificates curl gnupg jq less unattended-upgrades apt-listchanges
systemd-timesyncd nftables python3-apt docker.io docker-compose python3-requests python3-yaml
cifs-utils python3-bcrypt logrotate skopeo iproute2"

if [ "$force" != 1 ] && [ -f "$out/done" ]; then
    ln -sfn "$hash" "$top/.cache/vm/current"
    echo "guest image up to date: $out"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (debootstrap, chroot)" >&2; exit 1; }

start=$(date +%s)
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d /var/tmp/registry-cache-vm-image.XXXXXX)
rootfs="$work/rootfs"
cleanup() {
    for m in dev/pts dev sys proc; do
        mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT

echo "debootstrap $suite (first step)" >&2
nice -n 5 debootstrap --variant=minbase --include="$(echo $base | tr -d ' ')" \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

echo "apt-get install in the chroot (second step)" >&2
mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount --bind /dev/pts "$rootfs/dev/pts"
# No service starts in the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
in_root() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
{
    in_root apt-get update -q
    # With recommends, as the roles' apt tasks install.
    in_root apt-get install -y -q $packages
    in_root apt-get clean
} >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
}
rm -f "$rootfs/usr/sbin/policy-rc.d"

echo "configuring the guest" >&2
echo registry-cache-vm >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 registry-cache-vm\n' >"$rootfs/etc/hosts"
echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' >"$rootfs/etc/fstab"
# User networking: QEMU's slirp answers as 10.0.2.2 (the host's loopback) and 10.0.2.3
# (DNS). No resolver on purpose: the guest talks to the host's loopback and to nobody else
# (the apt lists of this build are fresh enough for the roles, see molecule/vm/prepare.yml).
cat >"$rootfs/etc/systemd/network/10-qemu.network" <<'EOF'
[Match]
Name=en*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
EOF
printf '# no resolver: the test guest reaches only the host (10.0.2.2)\n' >"$rootfs/etc/resolv.conf"
in_root systemctl enable systemd-networkd.service ssh.service serial-getty@ttyS0.service >/dev/null 2>&1
# Lean boot: no waiting for an "online" state that only counts the first link.
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
# sshd: no reverse lookups (no resolver), host keys were made by the package.
printf 'UseDNS no\n' >"$rootfs/etc/ssh/sshd_config.d/10-test-guest.conf"

# The sudo user Ansible connects as, with a key made for the tests.
in_root useradd --create-home --shell /bin/bash --groups sudo "$user"
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" >"$rootfs/etc/sudoers.d/$user"
chmod 0440 "$rootfs/etc/sudoers.d/$user"
ssh-keygen -q -t ed25519 -N '' -C "registry-cache molecule vm" -f "$out/id_ed25519"
install -d -m 0700 "$rootfs/home/$user/.ssh"
install -m 0600 "$out/id_ed25519.pub" "$rootfs/home/$user/.ssh/authorized_keys"
in_root chown -R "$user:$user" "/home/$user/.ssh"
# Its systemd user manager stays up between SSH logins (starting it again for each new
# connection costs the emulated guest seconds).
install -d "$rootfs/var/lib/systemd/linger"
touch "$rootfs/var/lib/systemd/linger/$user"

for m in dev/pts dev sys proc; do umount "$rootfs/$m"; done
cp "$(readlink -f "$rootfs"/boot/vmlinuz-*)" "$out/vmlinuz"
cp "$(readlink -f "$rootfs"/boot/initrd.img-*)" "$out/initrd.img"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb

echo "packing root.img" >&2
truncate -s 10G "$out/root.img"
mkfs.ext4 -q -F -L root -d "$rootfs" "$out/root.img"
du -sh --apparent-size "$rootfs" | sed 's/^/rootfs: /' >&2
date -u +%FT%TZ >"$out/done"
ln -sfn "$hash" "$top/.cache/vm/current"
echo "guest image built in $(( $(date +%s) - start )) s: $out"
