"""Watch and election-observe streams as cancellable iterators."""

from __future__ import annotations

import queue
from typing import Iterator

import grpc

from securekv.client.errors import KNOWN_MESSAGES, ClientError, WatchCanceled, from_rpc_error
from securekv.proto import rpc_pb2

ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
ERR_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
# etcdctl asks the server to refuse a watch on a member without a leader.
WATCH_METADATA = (("hasleader", "true"),)


def cancel_error(resp: rpc_pb2.WatchResponse) -> WatchCanceled:
    """clientv3's ``WatchResponse.Err()`` for a canceled response."""
    if resp.compact_revision:
        return WatchCanceled(ERR_COMPACTED, resp.compact_revision)
    reason = resp.cancel_reason
    if reason and resp.created:
        # Refused at creation (e.g. permission denied): clientv3 keeps the reason as the
        # stream's closeErr and prints it bare.
        return WatchCanceled(reason)
    if reason:
        text = reason if reason in KNOWN_MESSAGES else f"rpc error: code = FailedPrecondition desc = {reason}"
        return WatchCanceled(text)
    return WatchCanceled(ERR_FUTURE_REV)


class Watch:
    """One watcher on its own Watch stream.

    Iterating yields every WatchResponse after the ``created`` one: event batches, progress
    notifications, and finally a ``canceled`` response if the server cancels (iteration then
    stops; :func:`cancel_error` gives clientv3's error for it). :meth:`events` is the
    convenience form that yields events and raises :class:`WatchCanceled`.
    """

    def __init__(self, stub, create: rpc_pb2.WatchCreateRequest, timeout: float | None = None) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))
        self._closed = False
        self._call = stub.Watch(self._request_iter(), metadata=WATCH_METADATA, wait_for_ready=True)
        self.watch_id: int | None = None
        self.created: rpc_pb2.WatchResponse | None = None
        self._timeout = timeout

    def _request_iter(self) -> Iterator[rpc_pb2.WatchRequest]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def request_progress(self) -> None:
        """Ask for a progress notification (answered with the current revision)."""
        self._requests.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def cancel(self) -> None:
        """Stop the watch and close its stream; a blocked iteration ends cleanly."""
        if not self._closed:
            self._closed = True
            self._requests.put(None)
            self._call.cancel()

    close = cancel

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __iter__(self) -> Iterator[rpc_pb2.WatchResponse]:
        try:
            for resp in self._call:
                if self.created is None and resp.created:
                    self.created = resp
                    self.watch_id = resp.watch_id
                    if not resp.canceled:
                        continue
                yield resp
                if resp.canceled:
                    self.cancel()
                    return
        except grpc.RpcError as exc:
            if self._closed:
                return
            raise from_rpc_error(exc) from None

    def events(self) -> Iterator:
        """Yield each mvccpb.Event; raise WatchCanceled if the server cancels the watch."""
        for resp in self:
            if resp.canceled:
                raise cancel_error(resp)
            yield from resp.events


class Observe:
    """Election observation stream (LeaderResponse per leader change)."""

    def __init__(self, call) -> None:
        self._call = call
        self._closed = False

    def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._call.cancel()

    close = cancel

    def __iter__(self):
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if self._closed:
                return
            raise from_rpc_error(exc) from None


__all__ = ["Watch", "Observe", "cancel_error", "ClientError"]
