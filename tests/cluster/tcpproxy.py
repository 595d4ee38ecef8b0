"""The loopback TCP proxy now lives in the package (``securekv.torture.proxy``), where the
fault suite uses it too; the cluster tests keep importing it under this name."""

from securekv.torture.proxy import Proxy, pid_owning, socket_inode

__all__ = ["Proxy", "pid_owning", "socket_inode"]
