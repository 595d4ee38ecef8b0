"""etcdctl 3.4's output formats: ``simple``, ``json`` (Go encoding/json) and ``table``.

Each method mirrors one of etcdctl's printer methods and writes bytes (keys and values are
printed raw, like Go's ``string([]byte)``). A format a command does not support raises
:class:`Unsupported` *after* the RPC, which is when etcdctl notices too.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO, Sequence

import attrs

from securekv.client import gojson, table
from securekv.client.gofmt import humanize_bytes
from securekv.proto import rpc_pb2

FORMATS = ("simple", "json", "table")


class Unsupported(Exception):
    """``<format> not supported as output format`` (etcdctl exit code 4)."""


@attrs.frozen
class Health:
    endpoint: str
    health: bool
    took: str
    error: str = ""


@attrs.frozen
class EndpointStatus:
    endpoint: str
    resp: rpc_pb2.StatusResponse


@attrs.frozen
class EndpointHash:
    endpoint: str
    resp: rpc_pb2.HashKVResponse


def hex_escape(data: bytes) -> bytes:
    return "".join(f"\\x{c:02x}" for c in data).encode()


def lease_hex(lease_id: int) -> str:
    return f"{lease_id & 0xFFFFFFFFFFFFFFFF:016x}" if lease_id < 0 else f"{lease_id:016x}"


def alarm_text(alarm: rpc_pb2.AlarmMember) -> str:
    """gogoproto's CompactTextString of an AlarmMember (what ``%+v`` prints)."""
    parts = []
    if alarm.memberID:
        parts.append(f"memberID:{alarm.memberID} ")
    if alarm.alarm:
        parts.append(f"alarm:{rpc_pb2.AlarmType.Name(alarm.alarm)} ")
    return "".join(parts)


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (strconv.Quote) for the printable text etcdctl quotes."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def permission_text(key: bytes, range_end: bytes) -> bytes:
    """One permission line of ``role get`` (etcdctl's printRange), bytes printed raw."""
    if not range_end:
        return b"\t" + key
    text = b"\t[" + key + b", " + (range_end + b")" if range_end != b"\0" else b"<open ended>")
    if _prefix_end(key) == range_end:
        text += b" (prefix " + key + b")"
    return text


def _prefix_end(key: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd (kept here: this module must not import grpc)."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def member_rows(resp: rpc_pb2.MemberListResponse) -> tuple[list[str], list[list[str]]]:
    hdr = ["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"]
    rows = [[f"{m.ID:x}", "started" if m.name else "unstarted", m.name, ",".join(m.peerURLs),
             ",".join(m.clientURLs), "true" if m.isLearner else "false"] for m in resp.members]
    return hdr, rows


def status_rows(items: Sequence[EndpointStatus]) -> tuple[list[str], list[list[str]]]:
    hdr = ["endpoint", "ID", "version", "db size", "is leader", "is learner", "raft term", "raft index",
           "raft applied index", "errors"]
    rows = []
    for s in items:
        r = s.resp
        rows.append([s.endpoint, f"{r.header.member_id:x}", r.version, humanize_bytes(r.dbSize),
                     _go_bool(r.leader == r.header.member_id), _go_bool(r.isLearner), str(r.raftTerm),
                     str(r.raftIndex), str(r.raftAppliedIndex), ", ".join(r.errors)])
    return hdr, rows


def health_rows(items: Sequence[Health]) -> tuple[list[str], list[list[str]]]:
    return ["endpoint", "health", "took", "error"], [[h.endpoint, _go_bool(h.health), h.took, h.error] for h in items]


def hash_rows(items: Sequence[EndpointHash]) -> tuple[list[str], list[list[str]]]:
    return ["endpoint", "hash"], [[h.endpoint, str(h.resp.hash)] for h in items]


def db_status_rows(st) -> tuple[list[str], list[list[str]]]:
    return (["hash", "revision", "total keys", "total size"],
            [[f"{st.hash:x}", str(st.revision), str(st.total_key), humanize_bytes(st.total_size)]])


def _go_bool(v: bool) -> str:
    return "true" if v else "false"


class Printer:
    def __init__(self, fmt: str = "simple", is_hex: bool = False, out: BinaryIO | None = None,
                 err: BinaryIO | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(fmt)
        self.fmt = fmt
        self.is_hex = is_hex
        self.value_only = False
        self._out = out
        self._err = err

    # -- low level ----------------------------------------------------------------------
    @property
    def out(self) -> BinaryIO:
        return self._out or sys.stdout.buffer

    @property
    def err(self) -> BinaryIO:
        return self._err or sys.stderr.buffer

    def line(self, text: str | bytes = b"") -> None:
        self.out.write((text.encode() if isinstance(text, str) else text) + b"\n")
        self.out.flush()

    def json(self, value: Any) -> None:
        self.line(gojson.dumps(value))

    def _unsupported(self) -> None:
        raise Unsupported(f"{self.fmt} not supported as output format")

    def _rpc(self, msg) -> bool:
        """json: print the whole message; table: unsupported; simple: caller prints."""
        if self.fmt == "json":
            self.json(gojson.to_go(msg))
            return True
        if self.fmt == "table":
            self._unsupported()
        return False

    def kv(self, kv) -> None:
        key, value = kv.key, kv.value
        if self.is_hex:
            key, value = hex_escape(key), hex_escape(value)
        if not self.value_only:
            self.line(key)
        self.line(value)

    # -- KV -----------------------------------------------------------------------------
    def get(self, resp: rpc_pb2.RangeResponse) -> None:
        if self._rpc(resp):
            return
        for kv in resp.kvs:
            self.kv(kv)

    def put(self, resp: rpc_pb2.PutResponse) -> None:
        if self._rpc(resp):
            return
        self.line("OK")
        if resp.HasField("prev_kv"):
            self.kv(resp.prev_kv)

    def delete(self, resp: rpc_pb2.DeleteRangeResponse) -> None:
        if self._rpc(resp):
            return
        self.line(str(resp.deleted))
        for kv in resp.prev_kvs:
            self.kv(kv)

    def txn(self, resp: rpc_pb2.TxnResponse) -> None:
        if self._rpc(resp):
            return
        self.line("SUCCESS" if resp.succeeded else "FAILURE")
        for r in resp.responses:
            self.line("")
            which = r.WhichOneof("response")
            if which == "response_delete_range":
                self.delete(r.response_delete_range)
            elif which == "response_put":
                self.put(r.response_put)
            elif which == "response_range":
                self.get(r.response_range)
            else:
                self.line(f"unexpected response {r}")

    def watch(self, resp: rpc_pb2.WatchResponse) -> None:
        if self.fmt == "json":
            self.json({
                "Header": gojson.to_go(resp.header),
                "Events": [gojson.to_go(e) for e in resp.events],
                "CompactRevision": resp.compact_revision,
                "Canceled": resp.canceled,
                "Created": resp.created,
            })
            return
        if self.fmt == "table":
            self._unsupported()
        for ev in resp.events:
            self.line("PUT" if ev.type == 0 else "DELETE")
            if ev.HasField("prev_kv"):
                self.kv(ev.prev_kv)
            self.kv(ev.kv)

    # -- leases -------------------------------------------------------------------------
    def grant(self, resp: rpc_pb2.LeaseGrantResponse) -> None:
        if self.fmt == "json":
            self.json({**gojson.header_inline(resp), "ID": resp.ID, "TTL": resp.TTL, "Error": resp.error})
            return
        if self.fmt == "table":
            self._unsupported()
        self.line(f"lease {lease_hex(resp.ID)} granted with TTL({resp.TTL}s)")

    def revoke(self, lease_id: int, resp: rpc_pb2.LeaseRevokeResponse) -> None:
        if self._rpc(resp):
            return
        self.line(f"lease {lease_hex(lease_id)} revoked")

    def keepalive(self, resp: rpc_pb2.LeaseKeepAliveResponse) -> None:
        if self.fmt == "json":
            self.json({**gojson.header_inline(resp), "ID": resp.ID, "TTL": resp.TTL})
            return
        if self.fmt == "table":
            self._unsupported()
        self.line(f"lease {lease_hex(resp.ID)} keepalived with TTL({resp.TTL})")

    def timetolive(self, resp: rpc_pb2.LeaseTimeToLiveResponse, keys: bool) -> None:
        if self.fmt == "json":
            self.json({**gojson.header_inline(resp), "id": resp.ID, "ttl": resp.TTL, "granted-ttl": resp.grantedTTL,
                       "keys": [gojson.base64.b64encode(k).decode() for k in resp.keys] if resp.keys else None})
            return
        if self.fmt == "table":
            self._unsupported()
        if resp.grantedTTL == 0 and resp.TTL == -1:
            self.line(f"lease {lease_hex(resp.ID)} already expired")
            return
        text = f"lease {lease_hex(resp.ID)} granted with TTL({resp.grantedTTL}s), remaining({resp.TTL}s)"
        if keys:
            text += ", attached keys([" + " ".join(k.decode("utf-8", "replace") for k in resp.keys) + "])"
        self.line(text)

    def leases(self, resp: rpc_pb2.LeaseLeasesResponse) -> None:
        if self.fmt == "json":
            self.json({**gojson.header_inline(resp),
                       "leases": [{"id": item.ID} for item in resp.leases] if resp.leases else None})
            return
        if self.fmt == "table":
            self._unsupported()
        self.line(f"found {len(resp.leases)} leases")
        for item in resp.leases:
            self.line(lease_hex(item.ID))

    # -- cluster / maintenance ----------------------------------------------------------
    def member_list(self, resp: rpc_pb2.MemberListResponse) -> None:
        if self.fmt == "json":
            self.json(gojson.to_go(resp))
            return
        hdr, rows = member_rows(resp)
        if self.fmt == "table":
            self.out.write(table.render(hdr, rows).encode())
            self.out.flush()
            return
        for row in rows:
            self.line(", ".join(row))

    def member_add(self, resp: rpc_pb2.MemberAddResponse, name: str, peer_urls: str) -> None:
        """etcdctl prints the JSON message, or (simple) the env lines to start the new member."""
        if self._rpc(resp):
            return
        self.line(f"Member {resp.member.ID:16x} added to cluster {resp.header.cluster_id:16x}")
        conf = [f"{name if m.ID == resp.member.ID else m.name}={u}" for m in resp.members for u in m.peerURLs]
        self.line("")
        self.line(f"ETCD_NAME={go_quote(name)}")
        self.line(f"ETCD_INITIAL_CLUSTER={go_quote(','.join(conf))}")
        self.line(f"ETCD_INITIAL_ADVERTISE_PEER_URLS={go_quote(peer_urls)}")
        self.line('ETCD_INITIAL_CLUSTER_STATE="existing"')

    def _member_change(self, verb: str, member_id: int, resp: Any) -> None:
        if self._rpc(resp):
            return
        self.line(f"Member {member_id:16x} {verb} cluster {resp.header.cluster_id:16x}")

    def member_remove(self, member_id: int, resp: rpc_pb2.MemberRemoveResponse) -> None:
        self._member_change("removed from", member_id, resp)

    def member_update(self, member_id: int, resp: rpc_pb2.MemberUpdateResponse) -> None:
        self._member_change("updated in", member_id, resp)

    def member_promote(self, member_id: int, resp: rpc_pb2.MemberPromoteResponse) -> None:
        # etcdctl 3.4's json/table printers have no MemberPromote (a nil-interface panic there);
        # we print the JSON message and refuse table like its other RPC printers.
        self._member_change("promoted in", member_id, resp)

    def move_leader(self, leader: int, target: int, resp: rpc_pb2.MoveLeaderResponse) -> None:
        if self._rpc(resp):
            return
        self.line(f"Leadership transferred from {leader:x} to {target:x}")

    def _listing(self, rows_fn, items, json_items) -> None:
        if self.fmt == "json":
            self.json(json_items)
            return
        hdr, rows = rows_fn(items)
        if self.fmt == "table":
            self.out.write(table.render(hdr, rows).encode())
            self.out.flush()
            return
        for row in rows:
            self.line(", ".join(row))

    def endpoint_status(self, items: Sequence[EndpointStatus]) -> None:
        self._listing(status_rows, items, [{"Endpoint": s.endpoint, "Status": gojson.to_go(s.resp)} for s in items])

    def endpoint_hashkv(self, items: Sequence[EndpointHash]) -> None:
        self._listing(hash_rows, items, [{"Endpoint": h.endpoint, "HashKV": gojson.to_go(h.resp)} for h in items])

    def endpoint_health(self, items: Sequence[Health]) -> None:
        if self.fmt == "simple":
            for h in items:  # etcdctl writes these to stderr
                if not h.error:
                    msg = f"{h.endpoint} is healthy: successfully committed proposal: took = {h.took}\n"
                else:
                    msg = f"{h.endpoint} is unhealthy: failed to commit proposal: {h.error}\n"
                self.err.write(msg.encode())
            self.err.flush()
            return
        json_items = []
        for h in items:
            item = {"endpoint": h.endpoint, "health": h.health, "took": h.took}
            if h.error:
                item["error"] = h.error
            json_items.append(item)
        self._listing(health_rows, items, json_items)

    def alarm(self, resp: rpc_pb2.AlarmResponse) -> None:
        if self._rpc(resp):
            return
        for a in resp.alarms:
            self.line(alarm_text(a))

    # -- auth (etcdctl prints these itself in simple; json = the message; table: unsupported) --
    def _auth(self, resp: Any, *lines: str | bytes) -> None:
        if self._rpc(resp):
            return
        for text in lines:
            self.line(text)

    def role_add(self, role: str, resp: rpc_pb2.AuthRoleAddResponse) -> None:
        self._auth(resp, f"Role {role} created")

    def role_get(self, role: str, resp: rpc_pb2.AuthRoleGetResponse) -> None:
        if self._rpc(resp):
            return
        self.line(f"Role {role}")
        for title, kinds in (("KV Read:", (0, 2)), ("KV Write:", (1, 2))):
            self.line(title)
            for perm in resp.perm:
                if perm.permType in kinds:
                    self.line(permission_text(perm.key, perm.range_end))

    def role_delete(self, role: str, resp: rpc_pb2.AuthRoleDeleteResponse) -> None:
        self._auth(resp, f"Role {role} deleted")

    def role_list(self, resp: rpc_pb2.AuthRoleListResponse) -> None:
        self._auth(resp, *resp.roles)

    def role_grant_permission(self, role: str, resp: rpc_pb2.AuthRoleGrantPermissionResponse) -> None:
        self._auth(resp, f"Role {role} updated")

    def role_revoke_permission(self, role: str, key: bytes, end: bytes,
                               resp: rpc_pb2.AuthRoleRevokePermissionResponse) -> None:
        if not end:
            text = b"Permission of key " + key + b" is revoked from role " + role.encode()
        elif end != b"\0":
            text = b"Permission of range [" + key + b", " + end + b") is revoked from role " + role.encode()
        else:
            text = b"Permission of range [" + key + b", <open ended> is revoked from role " + role.encode()
        self._auth(resp, text)

    def user_add(self, name: str, resp: rpc_pb2.AuthUserAddResponse) -> None:
        self._auth(resp, f"User {name} created")

    def user_get(self, name: str, resp: rpc_pb2.AuthUserGetResponse) -> None:
        self._auth(resp, f"User: {name}", "Roles:" + "".join(" " + r for r in resp.roles))

    def user_change_password(self, resp: rpc_pb2.AuthUserChangePasswordResponse) -> None:
        self._auth(resp, "Password updated")

    def user_grant_role(self, user: str, role: str, resp: rpc_pb2.AuthUserGrantRoleResponse) -> None:
        self._auth(resp, f"Role {role} is granted to user {user}")

    def user_revoke_role(self, user: str, role: str, resp: rpc_pb2.AuthUserRevokeRoleResponse) -> None:
        self._auth(resp, f"Role {role} is revoked from user {user}")

    def user_delete(self, user: str, resp: rpc_pb2.AuthUserDeleteResponse) -> None:
        self._auth(resp, f"User {user} deleted")

    def user_list(self, resp: rpc_pb2.AuthUserListResponse) -> None:
        self._auth(resp, *resp.users)

    def db_status(self, st) -> None:
        """``snapshot status``: a boltread.DBStatus."""
        self._listing(lambda items: db_status_rows(items[0]), [st],
                      {"hash": st.hash, "revision": st.revision, "totalKey": st.total_key, "totalSize": st.total_size})
