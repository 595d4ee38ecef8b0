"""``securekv gateway``: etcd's L4 gateway (``etcd gateway start``), a TCP pass-through proxy.

Why L4: the client's TLS session (and its client certificate) goes end to end to a member, so
the gateway holds no key and sees no plaintext; members keep checking client certificates and
CRLs themselves. It only chooses where each new connection goes, with etcd's rules
(proxy/tcpproxy): endpoints are SRV-like records (priority, weight; a static endpoint is
priority 0, weight 0); a connection goes to the next active endpoint of the best priority
(round robin, or by weight); an endpoint whose dial fails is marked inactive ("deactivated
endpoint") and the next one is tried at once, so a killed member costs a client no more than
its reconnect; every ``--retry-delay`` inactive endpoints are dialled again and reactivated
("activated") when they answer. Dials are bounded (``DIAL_TIMEOUT``; etcd leaves a TODO).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import attrs
import trio

from securekv.server.etcdlog import event

log = logging.getLogger("securekv.gateway")
DIAL_TIMEOUT = 3.0
RELAY_CHUNK = 64 * 1024


@attrs.define
class Remote:
    host: str
    port: int
    priority: int = 0
    weight: int = 0
    active: bool = True

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class TCPGateway:
    def __init__(self, remotes: Sequence[Remote], retry_delay: float = 60.0, rng: random.Random | None = None) -> None:
        if not remotes:
            raise ValueError("the gateway needs at least one endpoint")
        self.remotes = list(remotes)
        self.retry_delay = retry_delay
        self.rng = rng or random.Random()
        self._pick_count = 0
        self.connections = 0

    def pick(self) -> Remote | None:
        """etcd's pick: the best priority class among active remotes; weighted, else round robin."""
        active = [r for r in self.remotes if r.active]
        if not active:
            return None
        best = min(r.priority for r in active)
        weighted = [r for r in active if r.priority == best and r.weight > 0]
        unweighted = [r for r in active if r.priority == best and r.weight == 0]
        if weighted:
            if unweighted and self.rng.randrange(100) == 1:
                r = unweighted[self._pick_count % len(unweighted)]
                self._pick_count += 1
                return r
            choose = self.rng.randrange(sum(r.weight for r in weighted))
            for r in weighted:
                choose -= r.weight
                if choose < 0:
                    return r
        for _ in range(len(self.remotes)):
            r = self.remotes[self._pick_count % len(self.remotes)]
            self._pick_count += 1
            if r.active and r.priority == best:
                return r
        return None

    async def _dial(self, remote: Remote) -> trio.SocketStream:
        with trio.fail_after(DIAL_TIMEOUT):
            return await trio.open_tcp_stream(remote.host, remote.port)

    async def handle(self, client: trio.SocketStream) -> None:
        upstream: trio.SocketStream | None = None
        while upstream is None:
            remote = self.pick()
            if remote is None:
                log.warning("no active endpoint for a client connection; closing it")
                await trio.aclose_forcefully(client)
                return
            try:
                upstream = await self._dial(remote)
            except (OSError, trio.TooSlowError) as exc:
                remote.active = False
                event(log, logging.WARNING, "deactivated endpoint", pkg="proxy/tcpproxy",
                      capnslog=f"deactivated endpoint [{remote.addr}] due to {_reason(exc)} for "
                               f"{self.retry_delay:g}s",
                      address=remote.addr, interval=f"{self.retry_delay:g}s", error=_reason(exc))
        self.connections += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
        await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(client)

    async def monitor(self) -> None:
        """Every retry delay, dial the inactive endpoints; reactivate those that answer."""
        while True:
            await trio.sleep(self.retry_delay)
            async with trio.open_nursery() as nursery:
                for remote in self.remotes:
                    if not remote.active:
                        nursery.start_soon(self._try_reactivate, remote)

    async def _try_reactivate(self, remote: Remote) -> None:
        try:
            stream = await self._dial(remote)
        except (OSError, trio.TooSlowError) as exc:
            event(log, logging.WARNING, "failed to activate endpoint (stay inactive for another interval)",
                  pkg="proxy/tcpproxy", address=remote.addr, interval=f"{self.retry_delay:g}s", error=_reason(exc),
                  capnslog=f"failed to activate endpoint [{remote.addr}] due to {_reason(exc)} (stay inactive for "
                           f"another {self.retry_delay:g}s)")
            return
        await trio.aclose_forcefully(stream)
        remote.active = True
        event(log, logging.INFO, "activated", pkg="proxy/tcpproxy", address=remote.addr,
              capnslog=f"activated {remote.addr}")

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        eps = [r.addr for r in self.remotes]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.monitor)
            await nursery.start(trio.serve_listeners, self.handle, listeners)
            event(log, logging.INFO, "ready to proxy client requests", pkg="proxy/tcpproxy", endpoints=eps,
                  capnslog=f"ready to proxy client requests to {eps}")
            task_status.started()


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(RELAY_CHUNK)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        scope.cancel()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"dial timed out after {DIAL_TIMEOUT:g}s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


__all__ = ["Remote", "TCPGateway"]
