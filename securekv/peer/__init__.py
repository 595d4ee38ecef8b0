"""Peer transport: Raft messages and calls between cluster members over mutual TLS (docs/peer.md)."""

from securekv.peer.codec import decode_message, encode_message
from securekv.tlspolicy.peer import PeerTLS
from securekv.peer.transport import PeerStats, PeerTransport

__all__ = ["PeerTransport", "PeerTLS", "PeerStats", "encode_message", "decode_message"]
