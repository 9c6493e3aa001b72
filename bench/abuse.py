"""Hostile traffic against one real server: each attack must be refused in plain words, cheaply.

One ``python -m backend serve`` (a tiny model, ``--header-timeout 5 --max-connections 200
--max-upload-mb 64``) meets, one after the other, what a web page, a decompression bomb, a socket
hoarder, a slow sender, a whole-body sender and a squatter on the port can do. For each attack the
table shows the server's answer, how long it took, the server's resident memory before, at its peak
during (sampled every 50 ms) and after (once a health request answered), and whether a verified
health check still answers "ok" afterwards. Memory is what a bomb would cost; health is whether the
next user still gets in.

    python bench/abuse.py

Exits 1 if any attack is answered otherwise than expected or leaves the server unhealthy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.client
import io
import json
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.client import ApiError, Client, ClientError, NotOurServer, RawImage  # noqa: E402
from tests.service_server import RssSampler, ServerProcess, Squatter, zero_tiff  # noqa: E402

HEADER_TIMEOUT = 5.0
MAX_UPLOAD_MB = 64
MAX_CONNECTIONS = 200
SERVE_ARGS = (
    *("--header-timeout", f"{HEADER_TIMEOUT:g}", "--max-connections", str(MAX_CONNECTIONS)),
    *("--max-upload-mb", str(MAX_UPLOAD_MB)),
)
FAST = {"task": "upscale", "scale": 2, "steps": 2, "process_size": 256, "seed": 7}
MB = 2**20


# --------------------------------------------------------------------------- measuring
@dataclass
class Outcome:
    """What one attack got back, and whether that is the refusal we expect."""

    answer: str
    ok: bool
    note: str = ""  # why it is not ok, or what else was checked


@dataclass
class Row:
    name: str
    outcome: Outcome
    seconds: float
    rss_before: float
    rss_peak: float
    rss_after: float
    healthy: bool


def short(status: int | str, detail: object, width: int = 60) -> str:
    """An answer as the table shows it: the status and the start of the server's words."""
    text = " ".join(str(detail).split())
    return f"{status} {text[:width]}{'…' if len(text) > width else ''}"


def detail_of(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["detail"])
    except (ValueError, KeyError, TypeError):
        return payload[:200].decode("utf-8", "replace")


def send(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """One raw request with exactly these headers (a browser's or an attacker's, not the client's)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = dict(headers or {})
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, detail_of(response.read())
    finally:
        conn.close()


def healthy(server: ServerProcess) -> bool:
    """A fresh client, so the server must prove itself again, and the process must still run."""
    try:
        ok = Client(server.url, timeout=30).health().status == "ok"
    except ClientError:
        return False
    return ok and server.process is not None and server.process.poll() is None


# --------------------------------------------------------------------------- hostile bodies
def npy_header_only(shape: tuple[int, ...], descr: str = "<f8", extra: int = 16) -> bytes:
    """A .npy that declares ``shape`` but carries only ``extra`` bytes of data."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue() + bytes(extra)


@contextlib.contextmanager
def open_sockets(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """``count`` connections held open (optionally after a partial request), closed on the way out."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if first_bytes:
                sock.sendall(first_bytes)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def server_connections(server: ServerProcess) -> int:
    """Connections the server holds open on its port: what --max-connections is meant to bound."""
    assert server.process is not None
    held = psutil.Process(server.process.pid).net_connections(kind="tcp")
    return sum(1 for c in held if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port)


def wait_closed(socks: list[socket.socket], timeout: float) -> list[float]:
    """Seconds until the server closed each socket (from the call on; missing ones never closed)."""
    started = time.monotonic()
    closed: list[float] = []
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() - started < timeout:
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # answered bytes (a 408, say) are read on; the close is what counts
                    selector.unregister(sock)
                    closed.append(time.monotonic() - started)
    return closed


# --------------------------------------------------------------------------- the attacks
Attack = Callable[[ServerProcess], Outcome]
SLOW_HEADER = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def expect(status: int, detail: str, wanted: int | range, note: str = "") -> Outcome:
    ok = status == wanted if isinstance(wanted, int) else status in wanted
    return Outcome(short(status, detail), ok, note if ok else f"expected {wanted}, got {status}: {detail}")


def dns_rebinding(server: ServerProcess) -> Outcome:
    status, detail = send(server.port, "GET", "/v1/jobs", {"Host": f"evil.example:{server.port}"})
    return expect(status, detail, 403)


def foreign_origin(server: ServerProcess) -> Outcome:
    body = json.dumps({"image": "a" * 24, "params": FAST}).encode()
    headers = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    status, detail = send(server.port, "POST", "/v1/jobs", headers, body)
    return expect(status, detail, 403)


def simple_cross_site_post(server: ServerProcess) -> Outcome:
    status, detail = send(server.port, "POST", "/v1/models/pasd/download", {}, b"")
    outcome = expect(status, detail, 415)
    after, after_detail = send(server.port, "GET", "/v1/models/pasd/download")
    if after != 404:
        outcome.ok = False
        outcome.note = f"a download started: GET /v1/models/pasd/download answered {after}: {after_detail}"
    return outcome


# Bodies are built once, before the server starts, so an attack's time is the server's alone.
@functools.cache
def tiff_bomb_body() -> bytes:
    return zero_tiff((10000, 10000, 4), np.float64, photometric="rgb", extrasamples=("unassalpha",))


@functools.cache
def sixteen_channel_body() -> bytes:
    return zero_tiff((10000, 10000, 16), np.uint8, photometric="minisblack", planarconfig="contig")


@functools.cache
def png_bomb_body() -> bytes:
    return imagecodecs.png_encode(np.zeros((4000, 4000, 4), np.uint16), level=9)


@functools.cache
def normal_png_body() -> bytes:
    """2 MP of gradients and a little noise: compresses like a photo, not like a bomb."""
    rng = np.random.default_rng(14)
    y, x = np.mgrid[0:1250, 0:1600]
    pixels = np.stack([x * 247 // 1600, y * 247 // 1250, (x + y) % 248], axis=-1)
    return imagecodecs.png_encode((pixels + rng.integers(0, 8, pixels.shape)).astype(np.uint8))


BODIES = (tiff_bomb_body, sixteen_channel_body, png_bomb_body, normal_png_body)


def tiff_bomb(server: ServerProcess) -> Outcome:
    body = tiff_bomb_body()
    status, detail = send(server.port, "POST", "/v1/images", {"Content-Type": "image/tiff"}, body)
    return expect(status, detail, 413, f"{len(body) / MB:.1f} MiB file declaring 3.2 GB")


def sixteen_channel_tiff(server: ServerProcess) -> Outcome:
    body = sixteen_channel_body()
    outcomes = [
        expect(*send(server.port, "POST", "/v1/images", {"Content-Type": "image/tiff"}, body), 422)
        for _ in range(4)
    ]
    bad = [o for o in outcomes if not o.ok]
    return Outcome(f"4× {outcomes[-1].answer}", not bad, bad[0].note if bad else "")


def png_bomb(server: ServerProcess) -> Outcome:
    body = png_bomb_body()
    status, detail = send(server.port, "POST", "/v1/images", {"Content-Type": "image/png"}, body)
    return expect(status, detail, 413, f"{len(body) / 1e3:.0f} kB file declaring 128 MB")


def npy_header_bomb(server: ServerProcess) -> Outcome:
    body = npy_header_only((10000, 10000, 4))
    status, detail = send(server.port, "POST", "/v1/images", {"Content-Type": "application/x-npy"}, body)
    return expect(status, detail, range(400, 500))


def strip_job(server: ServerProcess) -> Outcome:
    image = server.client().upload(RawImage(100000, 1, 3, "uint8", bytes(100000 * 3)))
    body = json.dumps({"image": image.id, "params": {"scale": 4}}).encode()
    status, detail = send(server.port, "POST", "/v1/jobs", {"Content-Type": "application/json"}, body)
    return expect(status, detail, 422)


def idle_connections(server: ServerProcess) -> Outcome:
    client = Client(server.url, timeout=30)
    client.health()  # verified before the sockets pile up: what follows is the user's next request
    latencies: list[float] = []
    errors: list[str] = []
    with open_sockets(server.port, 300) as socks:
        time.sleep(0.2)  # the server has accepted them all (and shed what it sheds)
        held = server_connections(server)
        for _ in range(50):
            began = time.perf_counter()
            try:
                if client.health().status == "ok":
                    latencies.append(time.perf_counter() - began)
            except ClientError as exc:
                errors.append(type(exc).__name__)
        shed = len(wait_closed(socks, timeout=0.2))  # long before the header timeout: made room
    median = f"{statistics.median(latencies) * 1e3:.1f} ms" if latencies else "-"
    answer = f"health {len(latencies)}/50 ok, median {median}; server held {held}, shed {shed}"
    notes = [f"errors: {sorted(set(errors))}"] if errors else []
    if held > MAX_CONNECTIONS + 1:  # +1: the health request that may be on its way in
        notes.append(
            f"the server held {held} connections after 300 idle ones were opened, above its "
            f"--max-connections {MAX_CONNECTIONS}; only {shed} were shed (by the 50 health requests)"
        )
    return Outcome(answer, len(latencies) == 50 and not notes, "; ".join(notes))


def slowloris(server: ServerProcess) -> Outcome:
    with open_sockets(server.port, 50, SLOW_HEADER) as socks:
        closed = wait_closed(socks, timeout=HEADER_TIMEOUT * 4)
    if not closed:
        return Outcome("none closed in 20 s", False, "the header timeout did not close any socket")
    answer = f"{len(closed)}/50 closed after {min(closed):.1f}–{max(closed):.1f} s"
    ok = len(closed) == 50 and min(closed) > HEADER_TIMEOUT - 1 and max(closed) < HEADER_TIMEOUT * 2
    return Outcome(answer, ok, "" if ok else f"expected all 50 closed after ≈{HEADER_TIMEOUT:g} s")


def chunked_json(server: ServerProcess) -> Outcome:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        chunks = iter([b'{"image": "', *([b"a" * 65536] * 32), b'"}'])  # 2 MiB and a bit
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/v1/jobs", body=chunks, headers=headers, encode_chunked=True)
        response = conn.getresponse()
        return expect(response.status, detail_of(response.read()), 413)
    finally:
        conn.close()


def whole_body_sender(server: ServerProcess) -> Outcome:
    size = (MAX_UPLOAD_MB + 16) * MB
    request = urllib.request.Request(
        f"{server.url}/v1/images",
        data=bytes(size),
        method="POST",
        headers={"Content-Type": "application/x-npy"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return expect(response.status, detail_of(response.read()), 413)
    except urllib.error.HTTPError as refused:
        return expect(refused.code, detail_of(refused.read()), 413, f"{size / MB:.0f} MiB sent whole")
    except (OSError, http.client.HTTPException) as exc:  # a reset: the client never saw the answer
        return Outcome(f"{type(exc).__name__}: {exc}"[:70], False, "expected 413, got no answer")


def squatter(server: ServerProcess) -> Outcome:
    stranger = Squatter()
    try:
        client = Client(stranger.url, token="secret-token", timeout=10)
        try:
            client.upload(RawImage(32, 32, 3, "uint8", bytes(32 * 32 * 3)))
        except NotOurServer:
            refused = "NotOurServer"
        except Exception as exc:  # anything else is the wrong answer, shown as such
            refused = type(exc).__name__
        else:
            refused = "uploaded"
        seen = bytes(stranger.received)
    finally:
        stranger.close()
    leaked = [
        word
        for word in (b"secret-token", b"authorization", b"/v1/images", b"/v1/jobs", b"\x93NUMPY")
        if word in seen.lower() or word in seen
    ]
    sent = "0 bytes of the user's sent"
    if leaked:
        sent = "leaked " + ", ".join(w.decode("latin-1") for w in leaked)
    answer = f"{refused}; {sent} (it got {stranger.requests} health challenge(s) only)"
    ok = refused == "NotOurServer" and not leaked
    return Outcome(answer, ok, "" if ok else f"the squatter received: {seen[:300]!r}")


def concurrent_uploads(server: ServerProcess) -> Outcome:
    """Ordinary users beside hostile sockets: 100 idle and 50 half-sent ones held while they upload."""
    body = normal_png_body()
    client = Client(server.url, timeout=120)
    client.health()
    results: list[str] = []
    start = threading.Barrier(20, timeout=60)

    def upload() -> None:
        start.wait()
        try:
            info = client.upload(body, "image/png")
            results.append("201" if (info.width, info.height) == (1600, 1250) else f"size {info.width}")
        except ApiError as exc:
            results.append(f"{exc.status} {exc.detail[:40]}")
        except ClientError as exc:
            results.append(type(exc).__name__)

    with open_sockets(server.port, 100), open_sockets(server.port, 50, SLOW_HEADER):
        threads = [threading.Thread(target=upload) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    good = results.count("201")
    others = sorted(set(r for r in results if r != "201"))
    answer = f"{good}/20 × 201 ({len(body) / MB:.1f} MiB each)" + (f"; {others}" if others else "")
    return Outcome(answer, good == 20, f"other answers: {others}" if others else "")


ATTACKS: list[tuple[str, Attack]] = [
    ("1. DNS rebinding (Host: evil.example)", dns_rebinding),
    ("2. Foreign Origin POST /v1/jobs", foreign_origin),
    ("3. Simple cross-site POST (download)", simple_cross_site_post),
    ("4. TIFF bomb 10000²×4 float64", tiff_bomb),
    ("5. 16-channel TIFF ×4", sixteen_channel_tiff),
    ("6. PNG bomb 4000²×4 uint16", png_bomb),
    ("7. NPY header bomb (10000,10000,4) f8", npy_header_bomb),
    ("8. 1×100000 strip, job ×4", strip_job),
    ("9. 300 idle sockets + 50 health polls", idle_connections),
    ("10. Slowloris, 50 sockets", slowloris),
    ("11. Chunked JSON 2 MiB", chunked_json),
    (f"12. urllib {MAX_UPLOAD_MB + 16} MiB upload (limit {MAX_UPLOAD_MB})", whole_body_sender),
    ("13. Squatter on a port", squatter),
    ("14. 20 concurrent 2 MP PNG uploads beside 150 hostile sockets", concurrent_uploads),
]


def run_attack(server: ServerProcess, name: str, attack: Attack) -> Row:
    assert server.process is not None
    pid = server.process.pid
    print(f"… {name}", file=sys.stderr, flush=True)
    with RssSampler(pid, interval=0.05) as memory:
        before = memory.before / MB
        began = time.perf_counter()
        try:
            outcome = attack(server)
        except Exception as exc:  # a bug or a crash must show in the table, not end the run
            outcome = Outcome(short(type(exc).__name__, exc), False, f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - began
    well = healthy(server)
    try:
        after = psutil.Process(pid).memory_info().rss / MB
    except psutil.Error:
        after = float("nan")
    return Row(name, outcome, seconds, before, memory.peak / MB, after, well)


# --------------------------------------------------------------------------- report
def machine() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " + uncommitted changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    ram = psutil.virtual_memory().total / 2**30
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"commit {commit}; {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}; {now}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        from backend.models.tiny import write_tiny_model

        for build in BODIES:
            build()
        models = Path(tmp) / "models"
        write_tiny_model(models / "tiny-full", "full", seed=1)
        # One secret for this server and these clients, so the user's own config is neither read nor made.
        os.environ["GDU_SECRET_FILE"] = str(Path(tmp) / "secret")
        with ServerProcess(models, Path(tmp) / "home", *SERVE_ARGS) as server:
            deadline = time.monotonic() + 30
            while not server.healthy():  # "Serving on" comes a moment before the socket listens
                if time.monotonic() > deadline:
                    raise RuntimeError("server does not answer:\n" + server.output)
                time.sleep(0.05)
            for name, attack in ATTACKS:
                rows.append(run_attack(server, name, attack))
                if name.startswith("5.") and rows[-1].rss_after - rows[-1].rss_before > 100:
                    rows[-1].outcome.ok = False
                    rows[-1].outcome.note = "memory stayed behind: RSS after is >100 MiB above before"

    print(f"\nHostile traffic against one server (serve {' '.join(SERVE_ARGS)}), loopback\n")
    columns = ("attack", "answer", "time", "RSS before", "RSS peak", "RSS after", "healthy after")
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        cells = (
            r.name,
            r.outcome.answer.replace("|", "\\|"),
            f"{r.seconds:.2f} s",
            f"{r.rss_before:.0f} MiB",
            f"{r.rss_peak:.0f} MiB",
            f"{r.rss_after:.0f} MiB",
            "yes" if r.healthy else "**NO**",
        )
        print("| " + " | ".join(cells) + " |")
    print(f"\n{machine()}")
    ok = True
    for r in rows:
        if not r.outcome.ok or not r.healthy:
            ok = False
            why = r.outcome.note if not r.outcome.ok else "the server was not healthy afterwards"
            print(f"- {r.name}: {why}")
    print(f"\n{'every attack was refused as expected' if ok else 'FAILED: see above'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
