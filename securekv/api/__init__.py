"""grpcio services for etcd's v3 API: translation only; the work happens in securekv.server."""
