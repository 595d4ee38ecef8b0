"""grpc servicers for etcd's v3 API. Translation only: each method hands the request and the
caller's identity to the trio-side EtcdServer through the bridge."""

from __future__ import annotations

from typing import Any

import grpc

from securekv.api.bridge import Bridge
from securekv.proto import (
    health_pb2_grpc,
    rpc_pb2_grpc,
    v3election_pb2_grpc,
    v3lock_pb2_grpc,
)

class _Base:
    def __init__(self, bridge: Bridge, server: Any) -> None:
        self.bridge = bridge
        self.server = server

    def _u(self, context: grpc.ServicerContext, method: str, fn: Any, request: Any) -> Any:
        return self.bridge.unary(context, method, fn, request)


class KV(_Base, rpc_pb2_grpc.KVServicer):
    def Range(self, request, context):
        return self.bridge.unary_cb(context, "Range", self.server.range_cb, request)

    def Put(self, request, context):
        return self.bridge.unary_cb(context, "Put", self.server.put_cb, request)

    def DeleteRange(self, request, context):
        return self.bridge.unary_cb(context, "DeleteRange", self.server.delete_range_cb, request)

    def Txn(self, request, context):
        return self.bridge.unary_cb(context, "Txn", self.server.txn_cb, request)

    def Compact(self, request, context):
        return self._u(context, "Compact", self.server.compact, request)


class Watch(_Base, rpc_pb2_grpc.WatchServicer):
    def Watch(self, request_iterator, context):
        return self.bridge.stream(context, "Watch", self.server.open_watch, request_iterator, bidi=True)


class Lease(_Base, rpc_pb2_grpc.LeaseServicer):
    def LeaseGrant(self, request, context):
        return self._u(context, "LeaseGrant", self.server.lease_grant, request)

    def LeaseRevoke(self, request, context):
        return self._u(context, "LeaseRevoke", self.server.lease_revoke, request)

    def LeaseKeepAlive(self, request_iterator, context):
        return self.bridge.stream(context, "LeaseKeepAlive", self.server.open_keepalive, request_iterator, bidi=True)

    def LeaseTimeToLive(self, request, context):
        return self._u(context, "LeaseTimeToLive", self.server.lease_time_to_live, request)

    def LeaseLeases(self, request, context):
        return self._u(context, "LeaseLeases", self.server.lease_leases, request)


class Cluster(_Base, rpc_pb2_grpc.ClusterServicer):
    def MemberList(self, request, context):
        return self._u(context, "MemberList", self.server.member_list, request)

    def MemberAdd(self, request, context):
        return self._u(context, "MemberAdd", self.server.member_add, request)

    def MemberRemove(self, request, context):
        return self._u(context, "MemberRemove", self.server.member_remove, request)

    def MemberUpdate(self, request, context):
        return self._u(context, "MemberUpdate", self.server.member_update, request)

    def MemberPromote(self, request, context):
        return self._u(context, "MemberPromote", self.server.member_promote, request)


class Maintenance(_Base, rpc_pb2_grpc.MaintenanceServicer):
    def Alarm(self, request, context):
        return self._u(context, "Alarm", self.server.alarm, request)

    def Status(self, request, context):
        return self._u(context, "Status", self.server.status, request)

    def Defragment(self, request, context):
        return self._u(context, "Defragment", self.server.defragment, request)

    def Hash(self, request, context):
        return self._u(context, "Hash", self.server.hash, request)

    def HashKV(self, request, context):
        return self._u(context, "HashKV", self.server.hash_kv, request)

    def Snapshot(self, request, context):
        return self.bridge.stream(context, "Snapshot", self.server.open_snapshot, request, bidi=False)

    def MoveLeader(self, request, context):
        return self._u(context, "MoveLeader", self.server.move_leader, request)


class Auth(_Base, rpc_pb2_grpc.AuthServicer):
    def AuthEnable(self, request, context):
        return self._u(context, "AuthEnable", self.server.auth_enable, request)

    def AuthDisable(self, request, context):
        return self._u(context, "AuthDisable", self.server.auth_disable, request)

    def Authenticate(self, request, context):
        return self._u(context, "Authenticate", self.server.authenticate, request)

    def UserAdd(self, request, context):
        return self._u(context, "UserAdd", self.server.user_add, request)

    def UserGet(self, request, context):
        return self._u(context, "UserGet", self.server.user_get, request)

    def UserList(self, request, context):
        return self._u(context, "UserList", self.server.user_list, request)

    def UserDelete(self, request, context):
        return self._u(context, "UserDelete", self.server.user_delete, request)

    def UserChangePassword(self, request, context):
        return self._u(context, "UserChangePassword", self.server.user_change_password, request)

    def UserGrantRole(self, request, context):
        return self._u(context, "UserGrantRole", self.server.user_grant_role, request)

    def UserRevokeRole(self, request, context):
        return self._u(context, "UserRevokeRole", self.server.user_revoke_role, request)

    def RoleAdd(self, request, context):
        return self._u(context, "RoleAdd", self.server.role_add, request)

    def RoleGet(self, request, context):
        return self._u(context, "RoleGet", self.server.role_get, request)

    def RoleList(self, request, context):
        return self._u(context, "RoleList", self.server.role_list, request)

    def RoleDelete(self, request, context):
        return self._u(context, "RoleDelete", self.server.role_delete, request)

    def RoleGrantPermission(self, request, context):
        return self._u(context, "RoleGrantPermission", self.server.role_grant_permission, request)

    def RoleRevokePermission(self, request, context):
        return self._u(context, "RoleRevokePermission", self.server.role_revoke_permission, request)


class Lock(_Base, v3lock_pb2_grpc.LockServicer):
    def Lock(self, request, context):
        return self._u(context, "Lock", self.server.lock, request)

    def Unlock(self, request, context):
        return self._u(context, "Unlock", self.server.unlock, request)


class Election(_Base, v3election_pb2_grpc.ElectionServicer):
    def Campaign(self, request, context):
        return self._u(context, "Campaign", self.server.campaign, request)

    def Proclaim(self, request, context):
        return self._u(context, "Proclaim", self.server.proclaim, request)

    def Leader(self, request, context):
        return self._u(context, "Leader", self.server.leader, request)

    def Observe(self, request, context):
        return self.bridge.stream(context, "Observe", self.server.open_observe, request, bidi=False)

    def Resign(self, request, context):
        return self._u(context, "Resign", self.server.resign, request)


class Health(_Base, health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        return self._u(context, "Check", self.server.health_check, request)

    def Watch(self, request, context):
        return self.bridge.stream(context, "/grpc.health.v1.Health/Watch", self.server.open_health_watch, request,
                                  bidi=False)


def add_all(server: grpc.Server, bridge: Bridge, etcd: Any) -> None:
    rpc_pb2_grpc.add_KVServicer_to_server(KV(bridge, etcd), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(Watch(bridge, etcd), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(Lease(bridge, etcd), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(Cluster(bridge, etcd), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(Maintenance(bridge, etcd), server)
    rpc_pb2_grpc.add_AuthServicer_to_server(Auth(bridge, etcd), server)
    v3lock_pb2_grpc.add_LockServicer_to_server(Lock(bridge, etcd), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(Election(bridge, etcd), server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(bridge, etcd), server)


__all__ = ["add_all"]
