"""Deny by default, enforced at build time: every RPC of every service securekv's protobuf
descriptors define has a rule in securekv/auth/rules.py, and with auth on the gate refuses
each one to an identity without a role. A new RPC without a rule fails here (and the gate
would refuse it anyway: unknown methods are denied)."""

from __future__ import annotations

from typing import Any

import pytest

from securekv.api.auth_gate import AuthGate, Caller
from securekv.auth import RULES, AuthStore, rule_for
from securekv.proto import auth_pb2, health_pb2, rpc_pb2, v3election_pb2, v3lock_pb2
from securekv.rpctypes import EtcdError
from securekv.api.identity import Identity
from securekv.api.table import API, BY_PATH

HASH = "$2b$04$" + "a" * 53
MODULES = (rpc_pb2, v3lock_pb2, v3election_pb2, health_pb2)
# Errors that mean "refused for lack of identity or rights" (etcd's texts, translated or raw).
DENIALS = {
    "etcdserver: permission denied", "etcdserver: user name is empty", "etcdserver: user name not found",
    "auth: permission denied", "auth: user name is empty", "auth: user not found",
}


def all_methods() -> list[tuple[str, Any]]:
    """(gRPC full method name, method descriptor) of every service in the descriptors."""
    out = []
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.append((f"/{service.full_name}/{method.name}", method))
    return out


class Source:
    def __init__(self) -> None:
        st = AuthStore()
        st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=HASH))
        st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
        st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="roleless", hashedPassword=HASH))
        st.apply("auth_enable", rpc_pb2.AuthEnableRequest())
        self.store = st

    def auth_state(self):
        return self.store.state

    def lease_keys(self, lease_id: int):
        return [b"secret"]


def probe(method: Any) -> Any:
    """A request for the method: empty, except where an empty one would name nothing at all."""
    req = method.input_type._concrete_class()
    name = method.full_name
    if name.endswith("UserGet"):
        req.name = "root"  # anyone may read themselves; asking for another user needs admin
    elif name.endswith("RoleGet"):
        req.role = "root"
    elif name.endswith("Watch.Watch"):
        req.create_request.key = b"k"
    elif name.endswith("Range") or name.endswith("Put") or name.endswith("DeleteRange"):
        req.key = b"k"
    elif name.endswith("Alarm"):
        req.action = rpc_pb2.AlarmRequest.ACTIVATE
        req.alarm = rpc_pb2.NOSPACE
    return req


def test_descriptors_enumerate_all_services() -> None:
    names = {m for m, _ in all_methods()}
    assert len(names) >= 48
    for service in ("etcdserverpb.KV", "etcdserverpb.Watch", "etcdserverpb.Lease", "etcdserverpb.Cluster",
                    "etcdserverpb.Maintenance", "etcdserverpb.Auth", "v3lockpb.Lock", "v3electionpb.Election",
                    "grpc.health.v1.Health"):
        assert any(n.startswith(f"/{service}/") for n in names), service


@pytest.mark.parametrize("method", [m for m, _ in all_methods()])
def test_every_rpc_has_a_rule(method: str) -> None:
    assert rule_for(method) is not None, f"{method} has no rule in securekv/auth/rules.py"
    assert RULES[method] is rule_for(method.rsplit("/", 1)[1]) or method.startswith("/grpc.health")


@pytest.mark.parametrize("method", [m for m, _ in all_methods()])
def test_every_rpc_is_served_through_the_api_table(method: str) -> None:
    """The dispatcher and the gateway only know the API table: an RPC of the descriptors
    without a row would answer UNIMPLEMENTED, and a row's rule is the rule table's own entry."""
    row = BY_PATH.get(method)
    assert row is not None, f"{method} has no row in securekv/api/table.py"
    assert row.rule is RULES[method]


def test_every_api_row_has_a_rule() -> None:
    for row in API:
        assert row.rule is not None and row.rule is rule_for(row.path), row.path


@pytest.mark.parametrize("who", ["roleless user", "certificate of no user", "nobody"])
@pytest.mark.parametrize("method,desc", all_methods(), ids=[m for m, _ in all_methods()])
def test_every_rpc_is_denied_without_a_role(method: str, desc: Any, who: str) -> None:
    gate = AuthGate()
    gate.bind(Source())
    cn = {"roleless user": "roleless", "certificate of no user": "mallory", "nobody": ""}[who]
    caller = gate.caller_for(Identity(cn, "127.0.0.1:1"), "")
    rule = rule_for(method)
    assert rule is not None
    req = probe(desc)
    if rule.public:
        assert method.endswith("/Authenticate")  # checked by password, not by role
        return
    with pytest.raises(EtcdError) as info:
        gate.authorize(caller, method, None if rule.message else req)
        if rule.message is not None:  # streams: what a client can do is send messages
            gate.authorize_message(caller, method, req)
    assert info.value.message in DENIALS, (method, info.value)


def test_unknown_methods_are_refused_even_with_auth_off() -> None:
    gate = AuthGate()
    caller = Caller("root", Identity("root"))
    with pytest.raises(EtcdError):
        gate.authorize(caller, "/etcdserverpb.KV/Shiny", None)


def test_peer_rules_need_a_member_and_members_get_nothing_else() -> None:
    gate = AuthGate()
    gate.bind(Source())
    member = gate.peer_caller(0x1234)
    gate.authorize(member, "/securekv.peer/lease_keepalive", b"")
    with pytest.raises(EtcdError):
        gate.authorize(member, "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=b"k"))
    root = gate.caller_for(Identity("root"), "")
    with pytest.raises(EtcdError):
        gate.authorize(root, "/securekv.peer/lease_keepalive", b"")


def test_root_passes_every_rule() -> None:
    gate = AuthGate()
    gate.bind(Source())
    root = gate.caller_for(Identity("root"), "")
    for method, desc in all_methods():
        rule = rule_for(method)
        gate.authorize(root, method, None if rule.message else probe(desc))
        if rule.message is not None:
            gate.authorize_message(root, method, probe(desc))


def test_deviations_are_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "auth.md").read_text()
    for method, rule in RULES.items():
        if rule.deviation:
            assert method.rsplit("/", 1)[1] in doc, f"deviation of {method} not in docs/auth.md"
    assert auth_pb2.Permission.READWRITE == 2
