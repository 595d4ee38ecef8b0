"""Users, roles, permissions and tokens (pure: no I/O). See docs/auth.md.

``state`` (the replicated AuthState in etcd's bucket layout), ``store`` (applying auth
requests), ``check`` (permission checks shared by the gate and the applier), ``rules`` (the
per-RPC rule table), ``tokens`` (simple and JWT providers), ``limiter`` (failed-login limits).
"""

from .check import INTERNAL, AuthInfo
from .limiter import LoginLimiter
from .ranges import KeyRange, RangeSet
from .rules import RULES, Rule, full_name, rule_for
from .state import ROOT_ROLE, ROOT_USER, AuthState, Permission, Role, User
from .store import AUTH_KINDS, AuthChange, AuthStore
from .tokens import JWTTokens, SimpleTokens, TokenSpec, parse_token_spec

__all__ = [
    "AUTH_KINDS", "INTERNAL", "RULES", "ROOT_ROLE", "ROOT_USER", "AuthChange", "AuthInfo", "AuthState", "AuthStore",
    "JWTTokens", "KeyRange", "LoginLimiter", "Permission", "RangeSet", "Role", "Rule", "SimpleTokens", "TokenSpec",
    "User", "full_name", "parse_token_spec", "rule_for",
]
