"""systemd's readiness protocol (sd_notify), for `Type=notify` units.

systemd names an AF_UNIX datagram socket in $NOTIFY_SOCKET (a leading '@'
means the abstract namespace); a service says it is ready by sending
"READY=1" there, and may add "STATUS=..." lines that `systemctl status`
shows. Without $NOTIFY_SOCKET (not run by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") as one datagram; False if not sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name; not notifying", address)
        return False
    message = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as e:
        log.warning("could not notify systemd through %s: %s", os.environ["NOTIFY_SOCKET"], e)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")
