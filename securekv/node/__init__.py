"""The node core: one member's Raft-driven node logic as a pure state machine (sans-IO).

Typed inputs in (``inputs.py``), effects out (``effects.py``); driven by the trio server
(``securekv/server/node.py``) and by the simulator (``securekv/sim``). See docs/cluster.md.
"""

from __future__ import annotations

from .core import CATCHUP_ENTRIES, NodeCore
from .entry import EntryCodec, Prepared, peek_header
from .machine import Machine, ServerMachine
from .membership import META_KEY, PUBLISH_PREFIX, Member, Membership, publish_entry

__all__ = ["CATCHUP_ENTRIES", "EntryCodec", "Machine", "META_KEY", "Member", "Membership", "NodeCore", "PUBLISH_PREFIX",
           "Prepared", "ServerMachine", "peek_header", "publish_entry"]
