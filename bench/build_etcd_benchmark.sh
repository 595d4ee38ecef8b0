#!/usr/bin/env bash
# Builds etcd 3.4's own benchmark tool (tools/benchmark from Debian's `etcd` source package)
# in a scratch directory, offline against Debian's packaged Go libraries. Nothing built here is
# committed. Usage: bench/build_etcd_benchmark.sh [WORKDIR]  -> prints the binary's path.
set -euo pipefail
W="${1:-${TMPDIR:-/tmp}/securekv-etcd-benchmark}"
if [ -x "$W/benchmark" ]; then echo "$W/benchmark"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q golang-go golang-etcd-server-dev dpkg-dev >&2
# Source packages: a deb-src twin of the machine's own Debian apt entry (no host names here).
if [ ! -f /etc/apt/sources.list.d/debian-src.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        > /etc/apt/sources.list.d/debian-src.sources
    apt-get update -q >&2
fi
mkdir -p "$W/src" "$W/gopath/src/go.etcd.io/etcd/tools"
(cd "$W/src" && ls -d etcd-3.4* >/dev/null 2>&1 || apt-get source etcd >&2)
rm -rf "$W/gopath/src/go.etcd.io/etcd/tools/benchmark"
cp -r "$W"/src/etcd-3.4*/tools/benchmark "$W/gopath/src/go.etcd.io/etcd/tools/"
GO111MODULE=off GOFLAGS= GOPATH="$W/gopath:/usr/share/gocode" \
    go build -o "$W/benchmark" go.etcd.io/etcd/tools/benchmark >&2
echo "$W/benchmark"
