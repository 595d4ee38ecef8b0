#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine and runs it.
# The README's test command and .ci/run both call exactly this script.
#
# The suite runs twice, each time from a fresh virtual environment, so CI tests exactly what a
# user's `pip install` gets and never the libraries a development machine happens to have:
#   newest  - `pip install '.[test]'`: the newest release of every dependency;
#   lower   - the same with `-c scripts/lower-bounds.txt`: the oldest versions pyproject.toml
#             allows.
# SECUREKV_TEST_MATRIX=newest (or lower) runs one of them; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests drive: etcd 3.4 + etcdctl, cfssl/cfssljson, openssl, systemd-analyze,
# nft and iptables-restore, curl (with HTTP/2, as operators run it), haproxy (`install haproxy`),
# dnsmasq (a loopback DNS server for the SRV discovery tests). apt needs root; a developer without it installs these once by hand.
APT_PACKAGES="etcd-server etcd-client golang-cfssl openssl curl systemd nftables iptables iproute2 util-linux git haproxy dnsmasq-base"
if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $APT_PACKAGES
else
    echo "not root: assuming these Debian packages are installed: $APT_PACKAGES" >&2
fi

run_suite() {  # run_suite NAME [pip constraint args...]
    local name=$1 venv=".venv-$1"
    shift
    echo "=== test run '$name': fresh virtual environment $venv ===" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$@" '.[test]'
    "$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(trio|grpcio|protobuf|cryptography|h11|h2|attrs|click|rich|bcrypt|pyyaml|prometheus.client)==' \
        | tr '\n' ' ' >&2
    echo >&2
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}"
}

PYTEST_ARGS=("$@")
case "${SECUREKV_TEST_MATRIX:-both}" in
    newest) run_suite newest ;;
    lower) run_suite lower -c scripts/lower-bounds.txt ;;
    both) run_suite newest && run_suite lower -c scripts/lower-bounds.txt ;;
    *) echo "SECUREKV_TEST_MATRIX must be newest, lower or both" >&2; exit 2 ;;
esac
