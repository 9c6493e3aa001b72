"""What every request must pass before a route runs: the right Host, no foreign web page, the token,
the documented content type, and a body within its limit.

The server listens on a port that any web page in the user's browser can reach. DNS rebinding (a
page whose host name resolves to 127.0.0.1) sends requests with a foreign ``Host``; a page may send
"simple" cross-site requests (no preflight: text/plain or form bodies, or none) with a foreign
``Origin``. Both are refused here, so the routes can trust that a request comes from a program of
the user's, not from a browser tab. Bodies are limited, and refused bodies are read (within bounds)
before the answer, so clients that send the whole body first (urllib, requests) see the answer
instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import schemas
from .config import API_VERSION, ServerConfig

log = logging.getLogger(__name__)

JSON_LIMIT = 1 << 20  # bytes; a job request is a few hundred
STATE_CHANGING = ("POST", "PUT", "PATCH")
# A refused body is read and dropped before answering, but only so much and so long.
DRAIN_BYTES = 4 << 30
DRAIN_SECONDS = 15.0
DRAIN_IDLE = 1.0  # a client that sends nothing more for this long is answered at once
WILDCARDS = ("0.0.0.0", "::", "")


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes its limit (answered as 413)."""


def allowed_hosts(config: ServerConfig) -> frozenset[str]:
    """Host names this server answers to: loopback, the bound address, and what the user allowed.

    A wildcard bind (0.0.0.0, ::) serves other machines under this machine's names and addresses.
    """
    names = {"127.0.0.1", "localhost", "::1", *config.allowed_hosts}
    if config.host not in WILDCARDS:
        names.add(config.host)
    else:
        names.update(_own_names())
    return frozenset(_normal_host(n) for n in names if n)


def _own_names() -> set[str]:
    names: set[str] = set()
    try:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                if address.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(address.address.split("%")[0])
    except Exception:  # no interface list: the names below and --allow-host still work
        pass
    for name in (socket.gethostname(), socket.getfqdn()):
        names.add(name)
        names.add(name.split(".")[0])
    return names


def _normal_host(name: str) -> str:
    return name.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def host_of(value: str) -> str:
    """The host name of a ``Host`` header value: ``name:port``, ``[v6]:port``, or without port."""
    value = value.strip()
    if value.startswith("["):
        return _normal_host(value[1 : value.find("]")] if "]" in value else value)
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return _normal_host(value)


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        config: ServerConfig,
        upload_types: Iterable[str],
        hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.port = config.port
        self.hosts = hosts if hosts is not None else allowed_hosts(config)
        self.expected = f"Bearer {config.token}".encode() if config.token else None
        self.upload_limit = config.max_upload_bytes
        self.upload_types = frozenset(t.encode() for t in upload_types)
        self.upload_path = f"/{API_VERSION}/images"
        self.health_path = f"/{API_VERSION}/health"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or []:
            if name in headers and name in (b"host", b"origin", b"content-length", b"authorization"):
                await _problem(send, 400, f"The request has two {name.decode()} headers.")
                return
            headers[name] = value
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        is_upload = path == self.upload_path and method == "POST"
        limit = self.upload_limit if is_upload else JSON_LIMIT

        refusal = self._foreign(headers)
        if refusal:
            log.warning("refused %s %s: %s", method, path, refusal)
            await _problem(send, 403, refusal)
            return

        authenticated = self.expected is None or secrets.compare_digest(
            headers.get(b"authorization", b""), self.expected
        )
        if not authenticated and not (path == self.health_path and method in ("GET", "HEAD")):
            await _drain(receive, headers, JSON_LIMIT)
            await _problem(
                send,
                401,
                "This server needs an access token: send 'Authorization: Bearer <token>' with the "
                "token shown by `python -m backend token` on the server machine.",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        scope.setdefault("state", {})["authenticated"] = authenticated

        if method in STATE_CHANGING:
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            allowed = self.upload_types if is_upload else frozenset({b"application/json"})
            if ctype not in allowed:
                kinds = ", ".join(sorted(t.decode() for t in allowed))
                detail = (
                    f"The content type {ctype.decode() or '(none)'} is not accepted here: send "
                    f"{'the image' if is_upload else 'JSON'} as {kinds}"
                    + ("" if is_upload else " (also when the body is empty)")
                    + "."
                )
                complete = await _drain(receive, headers, limit)
                await _problem(send, 415, detail, close=not complete)
                return

        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _problem(send, 400, "The Content-Length header is not a number.")
                return
            if declared > limit:
                await _drain(receive, headers, DRAIN_BYTES)
                await _problem(send, 413, _too_large(limit))
                return
        if is_upload:
            await self.app(scope, _limited(receive, limit), send)
            return
        if method in STATE_CHANGING:
            body = await _read_body(receive, limit)
            if body is None:
                await _problem(send, 413, _too_large(limit))
                return
            await self.app(scope, _replay(body, receive), send)
            return
        await self.app(scope, receive, send)

    def _foreign(self, headers: dict[bytes, bytes]) -> str | None:
        """Why the request comes from somewhere it must not (None when it may go on)."""
        host = headers.get(b"host")
        if host is not None and host_of(host.decode("latin-1")) not in self.hosts:
            return (
                f"This server does not answer to the host name {host_of(host.decode('latin-1'))!r} "
                "(protection against web pages that rebind their name to this machine). Use "
                "http://127.0.0.1, or start the server with --allow-host NAME to serve that name."
            )
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip()
            parts = urllib.parse.urlsplit(text)
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                port = -1
            if not (
                parts.scheme in ("http", "https")
                and _normal_host(parts.hostname or "") in self.hosts
                and port == self.port
            ):
                return (
                    f"Requests from web pages ({text}) are refused: only the plug-in, the dialog and "
                    "other programs of this machine's user may use this server."
                )
        site = headers.get(b"sec-fetch-site", b"").lower()
        if site in (b"cross-site", b"same-site"):
            return "Requests from other web sites are refused."
        return None


def _too_large(limit: int) -> str:
    size = f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit / 2**10:.0f} KiB"
    return f"The request body is larger than the limit of {size}."


async def _drain(receive: Receive, headers: dict[bytes, bytes], max_bytes: int) -> bool:
    """Read and drop a refused body (bounded), so the client can read the answer; True when all read.

    A client that waits for ``100 Continue`` has sent nothing and is answered at once.
    """
    if headers.get(b"expect", b"").lower() == b"100-continue":
        return False
    if headers.get(b"content-length") in (None, b"0") and b"chunked" not in headers.get(
        b"transfer-encoding", b""
    ):
        return True
    seen = 0
    deadline = time.monotonic() + DRAIN_SECONDS
    while seen <= max_bytes and time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(receive(), DRAIN_IDLE)
        except asyncio.TimeoutError:
            return False
        if message["type"] != "http.request":
            return False
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return seen <= max_bytes
    return False


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole (small) body, or None after draining one that passes ``limit``."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            if message.get("more_body", False):
                await _drain(receive, {b"transfer-encoding": b"chunked"}, DRAIN_BYTES)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # waits for the disconnect, as an unread receive would

    return replay


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(_too_large(limit))
        return message

    return limited


async def _problem(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None, close: bool = True
) -> None:
    """An error answered before a route ran; ``close`` when the request body was left unread."""
    body = schemas.Problem(detail=detail).model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *([(b"connection", b"close")] if close else []),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
