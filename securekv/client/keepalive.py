"""Lease keep-alive over the LeaseKeepAlive stream: once, or every TTL/3 until stopped."""

from __future__ import annotations

import threading
from typing import Iterator

import grpc

from securekv.client.errors import ClientError, from_rpc_error
from securekv.proto import rpc_pb2

ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"


def keepalive_once(stub, lease_id: int, timeout: float | None) -> rpc_pb2.LeaseKeepAliveResponse:
    """One request, half-close, one answer (what python-etcd3 and the gateway do)."""
    try:
        call = stub.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)]), timeout=timeout,
                                   wait_for_ready=True)
        for resp in call:
            if resp.TTL <= 0:
                raise ClientError(ERR_LEASE_NOT_FOUND, grpc.StatusCode.NOT_FOUND)
            call.cancel()
            return resp
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
    raise ClientError("lease keepalive stream ended without a response")


class KeepAlive:
    """Renew one lease every TTL/3 on one stream.

    Iterate for the responses; iteration ends when the lease is gone (a TTL ≤ 0 answer) or
    after :meth:`close`. The first renewal goes out at once, the next ones a third of the
    granted TTL apart (clientv3's schedule).
    """

    def __init__(self, stub, lease_id: int) -> None:
        self.lease_id = lease_id
        self._stop = threading.Event()
        self._interval = 0.0  # send the first request immediately
        self._answered = threading.Event()
        self._call = stub.LeaseKeepAlive(self._requests(), wait_for_ready=True)

    def _requests(self) -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
        while not self._stop.is_set():
            yield rpc_pb2.LeaseKeepAliveRequest(ID=self.lease_id)
            # Wait for the answer (it tells the TTL), then a third of it.
            self._answered.wait(timeout=5.0)
            self._answered.clear()
            if self._stop.wait(timeout=max(self._interval, 0.5)):
                return

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._answered.set()
            self._call.cancel()

    def __enter__(self) -> "KeepAlive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[rpc_pb2.LeaseKeepAliveResponse]:
        try:
            for resp in self._call:
                if resp.TTL <= 0:
                    self.close()
                    return
                self._interval = resp.TTL / 3.0
                self._answered.set()
                yield resp
        except grpc.RpcError as exc:
            if self._stop.is_set():
                return
            raise from_rpc_error(exc) from None


class Session:
    """A lease kept alive in a background thread (clientv3/concurrency's Session).

    ``done`` is set when the lease is lost (expired/revoked or the stream failed).
    """

    def __init__(self, client, ttl: int = 60) -> None:
        self.client = client
        self.lease = client.lease_grant(ttl).ID
        self.done = threading.Event()
        self._ka = client.lease_keepalive(self.lease)
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{self.lease:x}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in self._ka:
                pass
        except ClientError:
            pass
        self.done.set()

    def close(self, revoke: bool = True) -> None:
        self._ka.close()
        self._thread.join(timeout=5)
        if revoke:
            try:
                self.client.lease_revoke(self.lease)
            except ClientError:
                pass
