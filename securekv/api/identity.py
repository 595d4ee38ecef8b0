"""Who is on the other end of a client connection, as the transport knows it.

Filled once per connection by the listener (one call site: ``server/listener.py``
``_identity``) and handed to :class:`securekv.api.auth_gate.AuthGate` with each call's
metadata. ``serial`` lets a revocation hook find the live connections of a certificate.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Identity:
    common_name: str = ""  # CN of the verified client certificate ("" = none)
    remote: str = ""  # client ip:port, for logs
    tls: bool = True
    serial: str = ""  # serial number of the verified client certificate (hex, as ssl reports it)
    # A peer-profile certificate (server + client auth) naming a member: that member's name and
    # the certificate's DNS/IP SANs. Only ``securekv cluster renew`` uses them (cluster/signer.py).
    member_name: str = ""
    sans: tuple[str, ...] = ()
