"""securekv: a TLS-first, etcd-compatible, Raft-replicated key-value store."""

__version__ = "0.1.0"
# The etcd API version securekv speaks; clients (etcdctl, etcd3gw) compare against it.
ETCD_COMPAT_VERSION = "3.4.23"
