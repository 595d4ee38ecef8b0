"""The fault suite's clients: KV registers with compare-and-set, leases, watches.

Each client is a thread with its own :class:`securekv.client.Client` (mutual TLS, a deadline on
every call) talking to one member; after a failure it drops its connection and moves to
another member, as a real client with several endpoints does. Everything a client does is
recorded with ``time.monotonic_ns()`` at invocation and at return, so real-time order in the
recording is the order things happened. A call without an answer (deadline, connection lost)
is recorded as *pending*: it may or may not have taken effect.

Writes carry values unique to the run, which is what lets the checks find an acknowledged
write in the final history, and a pending one's effect (or its absence).
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from typing import Callable, Sequence

import attrs

from securekv.client import Client, ClientError, compare, op_put
from securekv.client.keepalive import ERR_LEASE_NOT_FOUND
from securekv.testing.history_checks import Event, EventKind, KVKind, KVOp, LeaseCall, LeaseLog, WatchSegment

log = logging.getLogger(__name__)

KV_PREFIX = b"/kv/"
#: Relative weights of put, get (linearizable), compare-and-set, delete.
DEFAULT_MIX = (40.0, 35.0, 20.0, 5.0)
LEASE_PREFIX = b"/lease/"


def now() -> int:
    return time.monotonic_ns()


@attrs.define
class Context:
    """What every client thread shares: where the members are, TLS files, the stop signal."""

    endpoints: dict[str, str]  # member name -> https endpoint
    cacert: str
    cert: str
    key: str
    stop: threading.Event
    seed: int
    op_timeout: float = 3.0
    rate: float = 0.0  # total KV ops/s across clients (0: as fast as answers come)
    errors: list[str] = attrs.Factory(list)
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def client(self, member: str, timeout: float | None = None) -> Client:
        return Client([self.endpoints[member]], cacert=self.cacert, cert=self.cert, key=self.key,
                      timeout=self.op_timeout if timeout is None else timeout, dial_timeout=1.0)

    def note_error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 200:
                self.errors.append(text)


class _Worker(threading.Thread, abc.ABC):
    def __init__(self, ctx: Context, name: str, index: int) -> None:
        super().__init__(name=name, daemon=True)
        self.ctx = ctx
        self.index = index
        self.rng = random.Random(f"{ctx.seed}-{name}")
        names = sorted(ctx.endpoints)
        self.member = names[index % len(names)]
        self._client: Client | None = None
        self.crashed: BaseException | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.ctx.client(self.member)
        return self._client

    def failover(self) -> None:
        """Drop the connection and move to another member (a fresh channel: no backoff)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        others = [n for n in sorted(self.ctx.endpoints) if n != self.member]
        if others:
            self.member = self.rng.choice(others)

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # recorded: the run reports it instead of hanging
            self.crashed = exc
            log.exception("client %s crashed", self.name)
            self.ctx.note_error(f"client {self.name} crashed: {exc!r}")
        finally:
            if self._client is not None:
                self._client.close()

    @abc.abstractmethod
    def work(self) -> None:
        """The client's loop until ``ctx.stop``; each subclass is one kind of client."""

    def pace(self, share: float) -> None:
        if self.ctx.rate > 0:
            self.ctx.stop.wait(self.rng.expovariate(self.ctx.rate * share))


class KVClient(_Worker):
    """Puts, linearizable gets, compare-and-set transactions and deletes on a few keys."""

    def __init__(self, ctx: Context, index: int, keys: Sequence[bytes], share: float,
                 mix: Sequence[float] = DEFAULT_MIX) -> None:
        super().__init__(ctx, f"kv{index}", index)
        self.keys = list(keys)
        self.actions = (self.put, self.get, self.cas, self.delete)
        self.weights = list(mix)
        self.share = share
        self.ops: list[KVOp] = []
        self.last_seen: dict[bytes, bytes | None] = {}
        self.seq = 0

    def value(self) -> bytes:
        self.seq += 1
        return f"c{self.index}-{self.seq}".encode()

    def work(self) -> None:
        stop = self.ctx.stop
        while not stop.is_set():
            key = self.rng.choice(self.keys)
            self.rng.choices(self.actions, self.weights)[0](key)
            self.pace(self.share)

    def _record(self, op: KVOp) -> None:
        self.ops.append(op)

    def _failed(self, op: KVOp, exc: ClientError) -> None:
        self._record(op)
        self.failover()
        self.ctx.stop.wait(0.02)

    def put(self, key: bytes) -> None:
        value = self.value()
        call = now()
        base = KVOp(self.index, KVKind.PUT, key, call, None, value=value, member=self.member)
        try:
            resp = self.client.put(key, value)
        except ClientError as exc:
            self._failed(base, exc)
            return
        self._record(attrs.evolve(base, ret=now(), revision=resp.header.revision))
        self.last_seen[key] = value

    def get(self, key: bytes) -> None:
        call = now()
        member = self.member
        try:
            resp = self.client.get(key)
        except ClientError:
            self.failover()  # a read without an answer constrains nothing: not recorded
            self.ctx.stop.wait(0.02)
            return
        value = bytes(resp.kvs[0].value) if resp.kvs else None
        self._record(KVOp(self.index, KVKind.GET, key, call, now(), value=value, member=member))
        self.last_seen[key] = value

    def cas(self, key: bytes) -> None:
        expected = self.last_seen.get(key)
        new = self.value()
        if expected is None:
            cmp = compare("version", key, "=", 0)  # etcd: a value compare on a missing key fails
        else:
            cmp = compare("value", key, "=", expected)
        call = now()
        base = KVOp(self.index, KVKind.CAS, key, call, None, value=new, expected=expected, member=self.member)
        try:
            resp = self.client.txn([cmp], [op_put(key, new)], [])
        except ClientError as exc:
            self._failed(base, exc)
            return
        ok = bool(resp.succeeded)
        self._record(attrs.evolve(base, ret=now(), ok=ok, revision=resp.header.revision))
        if ok:
            self.last_seen[key] = new

    def delete(self, key: bytes) -> None:
        call = now()
        base = KVOp(self.index, KVKind.DELETE, key, call, None, member=self.member)
        try:
            resp = self.client.delete(key)
        except ClientError as exc:
            self._failed(base, exc)
            return
        self._record(attrs.evolve(base, ret=now(), revision=resp.header.revision, deleted=resp.deleted))
        self.last_seen[key] = None


@attrs.define
class _Lease:
    id: int
    ttl: int
    granted: int
    fate: str
    keepalives: list[LeaseCall] = attrs.Factory(list)
    probes: list[LeaseCall] = attrs.Factory(list)
    revoked: int | None = None
    last_renewal: int = 0
    next_renewal: int = 0
    done: bool = False

    def freeze(self) -> LeaseLog:
        abandoned = None if self.fate == "revoke" else self.last_renewal
        return LeaseLog(self.id, self.ttl, self.granted, tuple(self.keepalives), tuple(self.probes),
                        self.revoked, abandoned)


class LeaseClient(_Worker):
    """Grants leases, attaches keys, then revokes them, lets them expire or keeps them alive.

    After an acknowledged revoke it sends more keep-alives: none may succeed.
    """

    def __init__(self, ctx: Context, index: int, ttl: int, max_live: int = 6) -> None:
        super().__init__(ctx, f"lease{index}", index)
        self.ttl = ttl
        self.max_live = max_live
        self.leases: list[_Lease] = []
        self.puts: list[KVOp] = []
        self.ops = 0

    def work(self) -> None:
        stop = self.ctx.stop
        while not stop.is_set():
            live = [l for l in self.leases if not l.done]
            if len(live) < self.max_live:
                self.grant()
            t = now()
            for lease in live:
                if stop.is_set():
                    break
                if lease.fate == "revoke" and t - lease.granted > lease.ttl * 1e9 / 2:
                    self.revoke(lease)
                elif lease.fate == "expire" and len(lease.keepalives) >= 2:
                    lease.done = True  # abandoned: it must expire on its own
                elif t >= lease.next_renewal:
                    self.keepalive(lease)
            stop.wait(0.1 + self.rng.random() * 0.2)
        # The workload is over: nobody renews any lease from here on.

    def grant(self) -> None:
        try:
            resp = self.client.lease_grant(self.ttl)
        except ClientError:
            self.failover()
            return
        self.ops += 1
        fate = self.rng.choices(["revoke", "expire", "keep"], [0.4, 0.4, 0.2])[0]
        t = now()
        lease = _Lease(resp.ID, resp.TTL, t, fate, last_renewal=t,
                       next_renewal=t + int(resp.TTL * 1e9 / 3))
        self.leases.append(lease)
        for j in range(self.rng.randint(1, 2)):
            key = LEASE_PREFIX + f"{resp.ID:x}/{j}".encode()
            value = f"l{self.index}-{resp.ID:x}-{j}".encode()
            c = now()
            try:
                put = self.client.put(key, value, lease=resp.ID)
            except ClientError:
                self.puts.append(KVOp(self.index, KVKind.PUT, key, c, None, value=value, member=self.member))
                self.failover()
                return
            self.ops += 1
            self.puts.append(KVOp(self.index, KVKind.PUT, key, c, now(), value=value,
                                  revision=put.header.revision, member=self.member))

    def keepalive(self, lease: _Lease) -> None:
        call = now()
        member = self.member
        try:
            resp = self.client.lease_keepalive_once(lease.id)
        except ClientError as exc:
            gone = exc.message == ERR_LEASE_NOT_FOUND
            lease.keepalives.append(LeaseCall(call, now() if gone else None, 0 if gone else None, member))
            self.ops += 1
            if gone:
                lease.done = True
            else:
                self.failover()
            return
        self.ops += 1
        t = now()
        lease.keepalives.append(LeaseCall(call, t, int(resp.TTL), member))
        lease.last_renewal = t
        lease.next_renewal = t + int(max(resp.TTL, 1) * 1e9 / 3)

    def revoke(self, lease: _Lease) -> None:
        try:
            self.client.lease_revoke(lease.id)
        except ClientError as exc:
            self.ops += 1
            if exc.message == ERR_LEASE_NOT_FOUND:
                lease.done = True  # it expired first; the revoke changed nothing
            else:
                self.failover()
            return
        self.ops += 1
        lease.revoked = now()
        lease.done = True
        for _ in range(2):  # must not bring it back
            self.keepalive(lease)

    def logs(self) -> list[LeaseLog]:
        return [l.freeze() for l in self.leases]


class Watcher(_Worker):
    """One logical watcher of the KV prefix: a stream at a time, resumed after every failure,
    stall or voluntary move with ``start_revision`` = the next revision it has not seen."""

    def __init__(self, ctx: Context, index: int, prefix: bytes = KV_PREFIX, start_revision: int = 1) -> None:
        super().__init__(ctx, f"watch{index}", index)
        self.prefix = prefix
        self.next_rev = start_revision
        self.segments: list[WatchSegment] = []
        self._events: list[Event] = []
        self._seg_start = start_revision
        self._confirmed = start_revision - 1
        self._watch: object | None = None
        self._lock = threading.Lock()
        self.last_activity = time.monotonic()
        self.opened_at = time.monotonic()
        self.lifetime = 5.0
        self.done = threading.Event()  # set to end the watcher once it confirmed `until`
        self.until = 0
        self.hard_stop = threading.Event()  # give up (the run's deadline passed)
        self.reconnects = 0

    @property
    def confirmed(self) -> int:
        with self._lock:
            done = max((s.confirmed for s in self.segments), default=0)
            return max(done, self._confirmed)

    def work(self) -> None:
        while not self.hard_stop.is_set():
            if self._caught_up():
                return
            self._one_stream()
            if self._caught_up():
                return
            self.reconnects += 1
            self.failover()
            self.hard_stop.wait(0.05)

    def _caught_up(self) -> bool:
        return self.done.is_set() and self.confirmed >= self.until

    def _one_stream(self) -> None:
        client = self.ctx.client(self.member, timeout=None)
        start = self.next_rev
        with self._lock:
            self._events, self._seg_start, self._confirmed = [], start, start - 1
        self.last_activity = self.opened_at = time.monotonic()
        self.lifetime = 3.0 + self.rng.random() * 6.0
        watch = None
        try:
            watch = client.watch(self.prefix, prefix=True, start_revision=start)
            self._watch = watch
            for resp in watch:
                self.last_activity = time.monotonic()
                if resp.canceled:
                    self.ctx.note_error(f"{self.name}: watch canceled by {self.member}: "
                                        f"{resp.cancel_reason or resp.compact_revision}")
                    break
                with self._lock:
                    for ev in resp.events:
                        event = _event_of(ev)
                        self._events.append(event)
                        self.next_rev = max(self.next_rev, event.revision + 1)
                        self._confirmed = max(self._confirmed, event.revision)
                    if not resp.events and not resp.fragment and resp.header.revision:
                        # A progress notification: everything up to this revision was sent.
                        self._confirmed = max(self._confirmed, resp.header.revision)
                        self.next_rev = max(self.next_rev, resp.header.revision + 1)
                if self.done.is_set() and self._confirmed >= self.until:
                    break
        except ClientError:
            pass
        finally:
            self._watch = None
            if watch is not None:
                watch.cancel()
            client.close()
            with self._lock:
                self.segments.append(WatchSegment(self.member, self._seg_start, tuple(self._events),
                                                  self._confirmed))
                self._events = []

    def poke(self, stall_after: float) -> None:
        """From the supervisor: ask for progress, end a stalled or old stream (it resumes)."""
        w = self._watch
        if w is None:
            return
        idle = time.monotonic() - self.last_activity
        age = time.monotonic() - self.opened_at
        if idle > stall_after or (age > self.lifetime and not self.done.is_set()):
            w.cancel()  # type: ignore[attr-defined]
            return
        try:
            w.request_progress()  # type: ignore[attr-defined]
        except Exception:  # the stream may be closing right now
            pass


def _event_of(ev) -> Event:  # noqa: ANN001 - an etcd mvccpb.Event message
    """One watch event as the history checker's Event (a delete carries no value)."""
    kv = ev.kv
    kind = EventKind.DELETE if ev.type == 1 else EventKind.PUT
    return Event(kv.mod_revision, bytes(kv.key), kind, bytes(kv.value) if kind is EventKind.PUT else b"", kv.lease)


def collect_history(ctx: Context, member: str, until: int, timeout: float) -> list[Event] | None:
    """Every event of every key from revision 1 to ``until`` as ``member`` serves them."""
    events: list[Event] = []
    client = ctx.client(member, timeout=None)
    deadline = time.monotonic() + timeout
    done = threading.Event()
    result: list[bool] = [False]
    watch = client.watch(b"\0", b"\0", start_revision=1)

    def pump() -> None:
        try:
            for resp in watch:
                events.extend(_event_of(ev) for ev in resp.events)
                top = events[-1].revision if events else 0
                if not resp.events and resp.header.revision:
                    top = max(top, resp.header.revision)
                if top >= until:
                    result[0] = True
                    return
        except ClientError:
            return
        finally:
            done.set()

    thread = threading.Thread(target=pump, name="reference-history", daemon=True)
    thread.start()
    try:
        while not done.wait(0.5):
            if time.monotonic() > deadline:
                break
            try:
                watch.request_progress()
            except Exception:
                pass
    finally:
        watch.cancel()
        thread.join(timeout=10)
        client.close()
    if not result[0]:
        return None
    return [e for e in events if e.revision <= until]


def call_quietly(fn: Callable[[], object]) -> object | None:
    try:
        return fn()
    except ClientError:
        return None


__all__ = ["Context", "KVClient", "LeaseClient", "Watcher", "collect_history", "KV_PREFIX", "LEASE_PREFIX", "now"]
