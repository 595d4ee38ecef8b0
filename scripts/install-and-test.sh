#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine and runs it.
# The README's test command and .ci/run both call exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests drive: etcd 3.4 + etcdctl, cfssl/cfssljson, openssl, systemd-analyze,
# nft and iptables-restore, curl (with HTTP/2, as operators run it). apt needs root; a developer without it installs these once by hand.
APT_PACKAGES="etcd-server etcd-client golang-cfssl openssl curl systemd nftables iptables iproute2 util-linux"
if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $APT_PACKAGES
else
    echo "not root: assuming these Debian packages are installed: $APT_PACKAGES" >&2
fi

python3 -m pip install -q '.[test]'
exec python3 -m pytest -q "$@"
