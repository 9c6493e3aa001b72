"""Connection limits that idle sockets cannot exhaust.

uvicorn's ``limit_concurrency`` counts open connections, including ones that never send a request,
so a few hundred idle sockets (before any token check) lock every client out. Instead:

* a connection must finish its request headers within ``header_timeout`` seconds (for its first
  request, and for each later one once it has started sending it), or it is closed;
* one remote address may hold at most ``max_client_connections`` (loopback clients share an address
  and are governed by the next rule only);
* past ``max_connections``, the oldest connection with no request in flight is closed to make room,
  so a new client always gets in while only idle sockets fill the table.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def guarded_protocol(header_timeout: float, max_connections: int, max_client_connections: int) -> type:
    """uvicorn's HTTP protocol class (httptools, else h11) with the limits above."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools missing: the pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    per_client: Counter[str] = Counter()

    class GuardedProtocol(Base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened = time.monotonic()
            self._peer = self.client[0] if self.client else ""
            self._header_timer: asyncio.TimerHandle | None = None
            self._counted = False
            if self._peer and not _is_loopback(self._peer):
                if per_client[self._peer] >= max_client_connections:
                    log.warning(
                        "refused a connection from %s: %d already open", self._peer, max_client_connections
                    )
                    self._refuse("Too many connections from your address; close some and try again.")
                    return
                per_client[self._peer] += 1
                self._counted = True
            open_now = sum(1 for p in self.connections if not p.transport.is_closing())
            if open_now > max_connections and not self._shed_idle():
                log.warning("refused a connection: %d open, none idle", len(self.connections))
                self._refuse("The server has too many connections open; try again shortly.")
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # bytes of a new request: its headers must complete in time
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._counted:
                per_client[self._peer] -= 1
                if per_client[self._peer] <= 0:
                    del per_client[self._peer]
                self._counted = False
            super().connection_lost(exc)

        # ------------------------------------------------------------------ helpers
        def _arm(self) -> None:
            waiting_for = self.cycle
            self._header_timer = self.loop.call_later(header_timeout, self._header_deadline, waiting_for)

        def _header_deadline(self, waiting_for: Any) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is waiting_for and (self.cycle is None or self.cycle.response_complete):
                log.info(
                    "closed a connection from %s: no complete request in %g s", self._peer, header_timeout
                )
                self.transport.close()

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _shed_idle(self) -> bool:
            idle = [  # a connection being closed stays in the set until its loss is reported
                p
                for p in self.connections
                if p is not self
                and getattr(p, "_opened", None) is not None
                and not p.transport.is_closing()
                and p._idle()
            ]
            if not idle:
                return False
            oldest = min(idle, key=lambda p: p._opened)
            oldest.transport.close()
            return True

        def _refuse(self, detail: str) -> None:
            body = json.dumps({"detail": detail}).encode()
            self.transport.write(_BUSY % (len(body), body))
            self.transport.close()

    return GuardedProtocol
