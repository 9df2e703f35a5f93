#!/usr/bin/env bash
# Installs Prometheus' binaries from the distribution's packages into /usr/local/bin without
# installing the packages: promtool (for `make lint`: promtool check rules, promtool test
# rules), and the server `prometheus` and `prometheus-node-exporter` for the default Molecule
# scenario (molecule/default/tests/test_prometheus.py copies them into the test host and
# scrapes the deployed registry, its mirror and the janitor's textfile with them). The
# packages would bring the server's web UI JavaScript libraries (about 96 MB with them),
# services that start on every interface and a system user; the three binaries are 112 MB.
# Measured on the 2-core CI VM (Debian 12, prometheus 2.42, node-exporter 1.5): 23 MB
# download in under 10 s, extraction a few seconds. Safe to run again: installs only the
# binaries not on PATH yet. Needs root (or sudo).
set -euo pipefail

# binary -> Debian package that has it in /usr/bin
declare -A wanted=(
    [promtool]=prometheus [prometheus]=prometheus
    [prometheus-node-exporter]=prometheus-node-exporter
)
missing=()
for bin in "${!wanted[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
[ ${#missing[@]} -gt 0 ] || exit 0
packages=$(for bin in "${missing[@]}"; do echo "${wanted[$bin]}"; done | sort -u)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
# apt-get update only when the package lists do not know the packages yet.
# shellcheck disable=SC2086 # one word per package
apt-get download -q $packages >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null
    apt-get download -q $packages >/dev/null
}
for bin in "${missing[@]}"; do
    dpkg-deb --fsys-tarfile "${wanted[$bin]}"_*.deb | tar -x "./usr/bin/$bin"
    $sudo install -m 0755 "usr/bin/$bin" "/usr/local/bin/$bin"
done
promtool --version | head -1
