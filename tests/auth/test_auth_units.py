"""The pure auth package: key ranges, the auth store's etcd semantics, checks, tokens, limiter."""

from __future__ import annotations

import random

import pytest

from securekv.auth import AuthInfo, AuthState, AuthStore, KeyRange, LoginLimiter, RangeSet, SimpleTokens
from securekv.auth.check import check_admin, check_any_role, check_keys, check_role_get, check_user_get, txn_ranges
from securekv.auth.state import READ, READWRITE, WRITE
from securekv.auth.tokens import JWTTokens, parse_token_spec
from securekv.errors import UsageError
from securekv.proto import auth_pb2, rpc_pb2
from securekv.rpctypes import EtcdError

HASH = "$2b$04$" + "a" * 53  # shape of a bcrypt hash; the store never checks passwords


# -- ranges -------------------------------------------------------------------------------------
def test_key_range_meanings() -> None:
    assert KeyRange.of(b"k") == KeyRange(b"k", b"k\0")
    assert KeyRange.of(b"a", b"\0") == KeyRange(b"a", None)
    assert KeyRange.of(b"a", b"c") == KeyRange(b"a", b"c")
    assert KeyRange.of(b"c", b"a") == KeyRange(b"c", b"c\0")  # empty range: still the key


def test_range_set_covers_unions_and_points() -> None:
    s = RangeSet([KeyRange.of(b"a", b"c"), KeyRange.of(b"c", b"e"), KeyRange.of(b"x")])
    assert len(s) == 2 and s.intervals()[0] == KeyRange(b"a", b"e")  # touching ranges merge
    assert s.covers(KeyRange.of(b"b", b"d")) and s.covers(KeyRange.of(b"a", b"e"))
    assert not s.covers(KeyRange.of(b"b", b"f")) and not s.covers(KeyRange.of(b"0", b"b"))
    assert s.covers(KeyRange.of(b"x")) and not s.covers(KeyRange.of(b"x\0"))
    assert not s.covers(KeyRange.of(b"x", b"\0"))
    open_ended = RangeSet([KeyRange.of(b"m", b"\0")])
    assert open_ended.covers(KeyRange.of(b"z", b"\0")) and not open_ended.covers(KeyRange.of(b"a", b"\0"))
    assert not RangeSet().covers(KeyRange.of(b"a"))


def test_range_set_matches_a_brute_force_model() -> None:
    rng = random.Random(7)
    keys = [bytes([c]) for c in b"abcdefgh"]
    for _ in range(300):
        ranges = []
        for _ in range(rng.randint(0, 4)):
            a, b = sorted(rng.sample(keys, 2))
            ranges.append(KeyRange.of(a, rng.choice([b"", b, b"\0"])))
        s = RangeSet(ranges)
        a, b = sorted(rng.sample(keys, 2))
        want = KeyRange.of(a, b)
        probes = [p for k in keys for p in (k, k + b"\0", k + b"z")]  # keys between the letters too
        members = [k for k in probes if want.begin <= k < (want.end or b"\xff")]
        model = all(any(r.begin <= k and (r.end is None or k < r.end) for r in ranges) for k in members)
        assert s.covers(want) == model, (ranges, want)


# -- the store ----------------------------------------------------------------------------------
def _store() -> AuthStore:
    st = AuthStore()
    st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=HASH))
    st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    return st


def _err(fn, *args) -> str:
    with pytest.raises(EtcdError) as info:
        fn(*args)
    return info.value.message


def test_enable_rules_and_revisions() -> None:
    st = AuthStore()
    assert _err(st.apply, "auth_enable", rpc_pb2.AuthEnableRequest()) == "etcdserver: root user does not exist"
    st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=HASH))
    assert _err(st.apply, "auth_enable", rpc_pb2.AuthEnableRequest()) == "etcdserver: root user does not have root role"
    st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))  # role need not exist
    before = st.state.revision
    change = st.apply("auth_enable", rpc_pb2.AuthEnableRequest())
    assert st.state.enabled and st.state.revision == before + 1 and change.rows
    assert not st.apply("auth_enable", rpc_pb2.AuthEnableRequest()).rows  # already on: nothing changes
    for kind, req in (("auth_user_delete", rpc_pb2.AuthUserDeleteRequest(name="root")),
                      ("auth_role_delete", rpc_pb2.AuthRoleDeleteRequest(role="root")),
                      ("auth_user_revoke_role", rpc_pb2.AuthUserRevokeRoleRequest(name="root", role="root"))):
        assert _err(st.apply, kind, req) == "etcdserver: invalid auth management"
    st.apply("auth_disable", rpc_pb2.AuthDisableRequest())
    assert not st.state.enabled


def test_user_and_role_errors_are_etcds() -> None:
    st = _store()
    a = st.apply
    assert _err(a, "auth_user_add", rpc_pb2.AuthUserAddRequest(name="")) == "etcdserver: user name is empty"
    assert _err(a, "auth_user_add", rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=HASH)) == \
        "etcdserver: user name already exists"
    assert _err(a, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="")) == "etcdserver: role name is empty"
    a("auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    assert _err(a, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r")) == "etcdserver: role name already exists"
    assert _err(a, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="x", role="r")) == \
        "etcdserver: user name not found"
    assert _err(a, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="nope")) == \
        "etcdserver: role name not found"
    assert _err(a, "auth_user_revoke_role", rpc_pb2.AuthUserRevokeRoleRequest(name="root", role="r")) == \
        "etcdserver: role is not granted to the user"
    assert _err(a, "auth_role_revoke_permission", rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"k")) == \
        "etcdserver: permission is not granted to the role"
    assert _err(a, "auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(name="r")) == \
        "etcdserver: permission not given"


def test_passwords_must_arrive_hashed() -> None:
    st = AuthStore()
    msg = "etcdserver: password was not hashed before proposal"
    assert _err(st.apply, "auth_user_add", rpc_pb2.AuthUserAddRequest(name="u", password="clear")) == msg
    assert _err(st.apply, "auth_user_add", rpc_pb2.AuthUserAddRequest(name="u")) == msg
    st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="u", options=auth_pb2.UserAddOptions(no_password=True)))
    assert st.state.users["u"].no_password and st.state.users["u"].password == b""
    assert _err(st.apply, "auth_user_change_password",
                rpc_pb2.AuthUserChangePasswordRequest(name="u", password="clear")) == msg
    assert all(b"clear" not in (v or b"") for _b, _k, v in st.state.rows())


def test_grant_updates_in_place_and_role_delete_cascades() -> None:
    st = _store()
    st.apply("auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    for key, kind in ((b"b", READ), (b"a", WRITE), (b"b", READWRITE)):
        perm = auth_pb2.Permission(permType=kind, key=key)
        st.apply("auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=perm))
    assert [(p.key, p.perm_type) for p in st.state.roles["r"].perms] == [(b"a", WRITE), (b"b", READWRITE)]
    st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="u", hashedPassword=HASH))
    st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r"))
    rev = st.state.revision
    assert not st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r")).rows
    assert st.state.revision == rev  # a duplicate grant is ignored, no new revision (etcd)
    st.apply("auth_role_delete", rpc_pb2.AuthRoleDeleteRequest(role="r"))
    assert st.state.users["u"].roles == ()


def test_rows_round_trip_in_etcds_layout() -> None:
    st = _store()
    st.apply("auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    st.apply("auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(
        name="r", perm=auth_pb2.Permission(permType=READ, key=b"a", range_end=b"\0")))
    st.apply("auth_enable", rpc_pb2.AuthEnableRequest())
    rows = st.state.rows()
    by = {}
    for bucket, key, value in rows:
        by.setdefault(bucket, []).append((key, value))
    again = AuthState.from_rows(by["auth"], by["auth_users"], by["auth_roles"])
    assert again == st.state
    user = auth_pb2.User.FromString(dict(by["auth_users"])[b"root"])  # etcd's own message
    assert user.name == b"root" and user.roles == ["root"] and user.password == HASH.encode()


def test_tokens_are_told_when_users_change() -> None:
    tokens = SimpleTokens(random.Random(1), ttl=60)
    st = AuthStore(tokens=tokens)
    st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=HASH))
    st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name="u", hashedPassword=HASH))
    st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    st.apply("auth_enable", rpc_pb2.AuthEnableRequest())
    t_root, t_u = tokens.assign("root", 1, 0.0), tokens.assign("u", 1, 0.0)
    st.apply("auth_user_change_password", rpc_pb2.AuthUserChangePasswordRequest(name="u", hashedPassword=HASH))
    assert tokens.info(t_u, 9, 1.0) is None and tokens.info(t_root, 9, 1.0) == ("root", 9)
    st.apply("auth_disable", rpc_pb2.AuthDisableRequest())
    assert tokens.info(t_root, 9, 1.0) is None


# -- checks ---------------------------------------------------------------------------------------
def _enabled_state() -> AuthState:
    st = _store()
    st.apply("auth_role_add", rpc_pb2.AuthRoleAddRequest(name="app"))
    st.apply("auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(
        name="app", perm=auth_pb2.Permission(permType=READWRITE, key=b"/app/", range_end=b"/app0")))
    st.apply("auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(
        name="app", perm=auth_pb2.Permission(permType=READ, key=b"cfg")))
    for name in ("alice", "nobody"):
        st.apply("auth_user_add", rpc_pb2.AuthUserAddRequest(name=name, hashedPassword=HASH))
    st.apply("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="app"))
    st.apply("auth_enable", rpc_pb2.AuthEnableRequest())
    return st.state


def test_checks_follow_etcd() -> None:
    s = _enabled_state()
    rev = s.revision
    alice, nobody, root = AuthInfo("alice", rev), AuthInfo("nobody", rev), AuthInfo("root", rev)
    check_keys(s, alice, reads=[KeyRange.of(b"/app/", b"/app0")], writes=[KeyRange.of(b"/app/x")])
    check_keys(s, alice, reads=[KeyRange.of(b"cfg")])
    check_keys(s, root, writes=[KeyRange.of(b"\0", b"\0")])
    assert _err(check_keys, s, alice, [], [KeyRange.of(b"cfg")]) == "etcdserver: permission denied"
    assert _err(check_keys, s, nobody, [KeyRange.of(b"cfg")]) == "etcdserver: permission denied"
    assert _err(check_keys, s, AuthInfo("", rev), [KeyRange.of(b"cfg")]) == "etcdserver: user name is empty"
    assert _err(check_keys, s, AuthInfo("alice", rev - 1), [KeyRange.of(b"cfg")]) == \
        "etcdserver: revision of auth store is old"
    assert _err(check_admin, s, alice) == "etcdserver: permission denied"
    assert _err(check_admin, s, AuthInfo("ghost", rev)) == "etcdserver: user name not found"
    check_admin(s, root)
    check_any_role(s, alice)
    assert _err(check_any_role, s, nobody) == "etcdserver: permission denied"
    check_user_get(s, alice, "alice")
    assert _err(check_user_get, s, alice, "root") == "etcdserver: permission denied"
    check_role_get(s, alice, "app")
    assert _err(check_role_get, s, alice, "root") == "etcdserver: permission denied"
    off = AuthState()
    check_admin(off, AuthInfo())  # auth off: everything passes
    check_keys(s, AuthInfo(internal=True), writes=[KeyRange.of(b"x")])  # the server's own requests


def test_nested_txn_ops_are_all_checked() -> None:
    inner = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"secret"))])
    outer = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"/app/a")],
        success=[rpc_pb2.RequestOp(request_txn=inner)],
        failure=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"/app/b", prev_kv=True))])
    reads, writes = txn_ranges(outer)
    assert KeyRange.of(b"secret") in writes and KeyRange.of(b"/app/b") in reads + writes
    s = _enabled_state()
    assert _err(check_keys, s, AuthInfo("alice", s.revision), reads, writes) == "etcdserver: permission denied"


# -- tokens ---------------------------------------------------------------------------------------
def test_simple_tokens_expire_unless_used() -> None:
    t = SimpleTokens(random.Random(3), ttl=10)
    tok = t.assign("u", 5, now=100.0)
    prefix, _, serial = tok.partition(".")
    assert len(prefix) == 32 and prefix.isalpha() and serial.isdigit()
    assert t.info(tok, 7, now=109.0) == ("u", 7)  # used: expiry moves to 119
    assert t.info(tok, 7, now=118.0) == ("u", 7)
    assert t.info(tok, 7, now=128.5) is None and len(t) == 0
    t.assign("u", 1, 0.0)
    t.purge(now=11.0)
    assert len(t) == 0


def test_simple_tokens_are_bounded() -> None:
    t = SimpleTokens(random.Random(3), ttl=10, max_tokens=3)
    first = t.assign("u", 1, 0.0)
    for _ in range(3):
        t.assign("u", 1, 0.0)
    assert len(t) == 3 and t.info(first, 1, 0.0) is None


def test_jwt_tokens_carry_etcds_claims() -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    t = JWTTokens("EdDSA", key, None, ttl=60)
    tok = t.assign("alice", 7, now=1000.0)
    claims = jwt.decode(tok, key.public_key(), algorithms=["EdDSA"], options={"verify_exp": False})
    assert claims == {"username": "alice", "revision": 7, "exp": 1060}
    assert t.info(tok, 99, now=1001.0) == ("alice", 7)  # the token's revision, not the store's
    assert t.info(tok, 99, now=1061.0) is None
    other = JWTTokens("EdDSA", ed25519.Ed25519PrivateKey.generate(), None)
    assert other.info(tok, 1, 1001.0) is None
    verify_only = JWTTokens("EdDSA", None, key.public_key())
    assert verify_only.info(tok, 1, 1001.0) == ("alice", 7)
    assert _err(verify_only.assign, "a", 1, 0.0) == "auth: token signing attempted with verify-only key"


def test_auth_token_option_parses_like_etcd() -> None:
    assert parse_token_spec("simple").kind == "simple"
    spec = parse_token_spec("jwt,pub-key=/p,priv-key=/k,sign-method=RS256,ttl=10m,foo=bar")
    assert (spec.pub_key, spec.priv_key, spec.sign_method, spec.ttl, spec.unknown) == ("/p", "/k", "RS256", 600.0,
                                                                                        ("foo",))
    assert parse_token_spec("jwt").sign_method == ""
    for bad in ("jwt,ttl", "jwt,a=b=c", "jwt,ttl=1m,ttl=2m", "opaque", "jwt,sign-method=XX1", "jwt,ttl=soon"):
        with pytest.raises(UsageError):
            parse_token_spec(bad)


# -- login limiter ------------------------------------------------------------------------------
def test_login_limiter_per_user_and_address() -> None:
    lim = LoginLimiter()
    for i in range(5):
        lim.check("bob", "10.0.0.1", float(i) * 0.1)
        lim.failed("bob", "10.0.0.1", float(i) * 0.1)
    assert _err(lim.check, "bob", "10.0.0.2", 0.5) == "etcdserver: too many requests"
    lim.check("carol", "10.0.0.1", 0.5)  # another user from the same address: still allowed
    lim.check("bob", "10.0.0.2", 6.0)  # one failure forgiven after 5 s
    for i in range(20):  # one address guessing many users
        lim.failed(f"user{i}", "10.0.0.9", 10.0)
    assert _err(lim.check, "fresh", "10.0.0.9", 10.0) == "etcdserver: too many requests"
    lim.check("fresh", "10.0.0.8", 10.0)
    lim.succeeded("bob")
    lim.check("bob", "10.0.0.3", 10.0)


def test_login_limiter_memory_is_bounded() -> None:
    lim = LoginLimiter(max_keys=100)
    for i in range(1000):
        lim.failed(f"u{i}", f"a{i}", float(i))
    assert len(lim.users) <= 100 and len(lim.addresses) <= 100
