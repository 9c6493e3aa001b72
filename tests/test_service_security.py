"""The service against web pages, strangers on its port, idle sockets, full disks and whole-body senders.

Each test drives a real ``python -m backend serve`` process over real sockets; the hostile side is
raw HTTP (a browser's requests, a squatter's listener), the user's side is the one client module.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from backend.client import (
    AuthError,
    Client,
    NotOurServer,
    RawImage,
    ServerUnreachable,
    ensure_server,
    health_proof,
    load_or_create_secret,
)
from gimp_plugin import plugin_source

from .conftest import fill
from .service_server import ServerProcess, Squatter, wait_for

sys.path.insert(0, str(plugin_source()))
import diffusion_upscale_core as core  # the plug-in's GIMP-free core

FAST = {"task": "upscale", "scale": 2, "steps": 2, "process_size": 256, "seed": 7}
SLOW = {**FAST, "steps": 200, "process_size": 512}


def raw(h: int, w: int, channels: int = 3) -> RawImage:
    rng = np.random.default_rng(h * 7 + w)
    return RawImage(w, h, channels, "uint8", rng.integers(0, 256, (h, w, channels), np.uint8).tobytes())


def send(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, object]]:
    """One raw request with exactly these headers (Host too, when given); returns (status, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = dict(headers or {})
    conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    text = response.read()
    conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, {"detail": text.decode("utf-8", "replace")}


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("security")
    limits = (
        *("--max-upload-mb", "8", "--max-output-megapixels", "2", "--header-timeout", "5"),
        *("--max-connections", "100"),
    )
    with ServerProcess(tiny_models["full"].parent, home, *limits) as running:
        yield running


@pytest.fixture(scope="module")
def stolen(server: ServerProcess) -> dict[str, str]:
    """What a user has on the server: an upload and a finished job."""
    client = server.client()
    image = client.upload(raw(48, 64)).id
    job = client.wait(client.submit(image, FAST).id).id
    return {"image": image, "job": job}


# --------------------------------------------------------------------------- web pages
def test_dns_rebinding_gets_nothing(server: ServerProcess, stolen: dict[str, str]) -> None:
    evil = {"Host": f"evil.example:{server.port}"}
    json_evil = {**evil, "Content-Type": "application/json"}
    attempts = [
        ("GET", "/v1/health", evil, None),
        ("GET", "/v1/jobs", evil, None),
        ("GET", f"/v1/images/{stolen['image']}/pixels", evil, None),
        ("GET", f"/v1/jobs/{stolen['job']}/result", evil, None),
        ("POST", "/v1/images", {**evil, "Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n"),
        ("POST", "/v1/jobs", json_evil, json.dumps({"image": stolen["image"]}).encode()),
        ("POST", "/v1/models/pasd/download", json_evil, b""),
        ("DELETE", f"/v1/jobs/{stolen['job']}", evil, None),
        ("DELETE", f"/v1/images/{stolen['image']}", evil, None),
    ]
    for method, path, headers, body in attempts:
        status, answer = send(server.port, method, path, headers, body)
        assert status == 403, (method, path, status, answer)
        assert "host name 'evil.example'" in str(answer["detail"])
    client = server.client()
    assert client.job(stolen["job"]).state == "succeeded"  # nothing was deleted
    assert client.image_info(stolen["image"]).width == 64
    with pytest.raises(Exception, match="No download"):
        client.download_status("pasd")
    for host in (
        f"127.0.0.1:{server.port}",
        f"localhost:{server.port}",
        f"[::1]:{server.port}",
        "LOCALHOST.",
    ):
        assert send(server.port, "GET", "/v1/health", {"Host": host})[0] == 200, host


def test_foreign_origins_and_cross_site_fetches_are_refused(
    server: ServerProcess, stolen: dict[str, str]
) -> None:
    body = json.dumps({"image": stolen["image"], "params": FAST}).encode()
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port + 1}", "file://"):
        headers = {"Origin": origin, "Content-Type": "application/json"}
        status, answer = send(server.port, "POST", "/v1/jobs", headers, body)
        assert status == 403 and "web pages" in str(answer["detail"]), (origin, status, answer)
    status, _ = send(server.port, "GET", "/v1/jobs", {"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    # The server's own pages (/docs) send its own origin: allowed.
    status, answer = send(server.port, "GET", "/v1/jobs", {"Origin": f"http://127.0.0.1:{server.port}"})
    assert status == 200 and any(j["id"] == stolen["job"] for j in answer["jobs"])  # type: ignore[union-attr]


def test_simple_cross_site_posts_change_nothing(server: ServerProcess, stolen: dict[str, str]) -> None:
    """A page's form or body-less fetch (no preflight) must not start downloads or cancel jobs."""
    client = server.client()
    job = client.submit(stolen["image"], SLOW, detached=True)
    try:
        simple = [
            ("POST", "/v1/models/pasd/download", {}, b""),
            ("POST", "/v1/models/pasd/download", {"Content-Type": "text/plain"}, b""),
            ("POST", f"/v1/jobs/{job.id}/cancel", {}, b""),
            (
                "POST",
                f"/v1/jobs/{job.id}/cancel",
                {"Content-Type": "application/x-www-form-urlencoded"},
                b"a=1",
            ),
            ("POST", "/v1/images", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
            ("POST", "/v1/jobs", {"Content-Type": "text/plain"}, b"{}"),
            ("POST", "/v1/server/shutdown", {}, b""),  # a page must not stop the server either
            ("POST", "/v1/server/shutdown", {"Content-Type": "text/plain"}, b""),
        ]
        for method, path, headers, body in simple:
            status, answer = send(server.port, method, path, headers, body)
            assert status == 415, (path, headers, status, answer)
        assert not client.job(job.id).cancel_requested and server.healthy()
        with pytest.raises(Exception, match="No download"):
            client.download_status("pasd")
    finally:
        client.cancel(job.id)
        wait_for(lambda: client.job(job.id).finished, timeout=60)


# --------------------------------------------------------------------------- strangers on the port
@pytest.mark.parametrize(
    "answer",
    [
        b'{"status": "ok", "api": "v1", "version": "0.1.0", "device": "cpu"}',
        b'{"status": "ok", "api": "v1", "proofs": ["' + b"0" * 64 + b'"]}',
        b"<html><body>Another web app</body></html>",
    ],
    ids=["old-style health", "forged proof", "another web app"],
)
def test_a_stranger_on_the_port_gets_neither_token_nor_pixels(answer: bytes, tmp_path: Path) -> None:
    squatter = Squatter(answer)
    try:
        client = Client(squatter.url, token="the-users-token", timeout=10)
        with pytest.raises(NotOurServer, match="not your GIMP Diffusion Upscale backend") as refused:
            client.upload(raw(32, 32))
        assert "Nothing was sent" in str(refused.value)
        with pytest.raises(NotOurServer):
            client.submit("a" * 24, FAST)
        # ensure_server neither trusts it nor starts a second server beside it; the plug-in says so.
        with pytest.raises(NotOurServer):
            ensure_server(squatter.url, python="/nonexistent/python", token="the-users-token", timeout=5)
        settings = core.BackendSettings(url=squatter.url, python=sys.executable, token="the-users-token")
        with pytest.raises(core.PluginError, match="Nothing was sent to it"):
            core.connect(settings)
        seen = bytes(squatter.received)
        assert b"the-users-token" not in seen and b"authorization" not in seen.lower()
        assert b"\x93NUMPY" not in seen and b"/v1/jobs" not in seen and b"/v1/images" not in seen
        assert seen.count(b"GET /v1/health?challenge=") >= 4
    finally:
        squatter.close()


def test_the_real_server_proves_itself_and_only_then_gets_the_token(
    tiny_models: dict[str, Path], tmp_path: Path, user_secret: Path
) -> None:
    token_file = tmp_path / "config" / "token"
    made = subprocess.run(
        [sys.executable, "-m", "backend", "token", "--token-file", str(token_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    token = made.stdout.strip()
    with ServerProcess(
        tiny_models["full"].parent, tmp_path, "--require-token", "--token-file", str(token_file)
    ) as running:
        challenge = secrets.token_hex(16)
        status, bare = send(running.port, "GET", f"/v1/health?challenge={challenge}")
        assert status == 200
        # Without the token: alive, and the proofs; no paths, memory, device or queue.
        assert set(bare) == {"status", "api", "proofs"}, bare
        assert health_proof(token.encode(), challenge) in bare["proofs"]  # type: ignore[operator]
        assert health_proof(load_or_create_secret(user_secret), challenge) in bare["proofs"]  # type: ignore[operator]
        assert send(running.port, "GET", "/v1/jobs")[0] == 401
        full = Client(running.url, token=token).health()
        assert full.version and "CPU" in (full.device or "") and full.memory and full.log_file
        # A client without the token still recognises the user's own server, then gets the 401.
        with pytest.raises(AuthError, match="access token"):
            Client(running.url, token="").jobs()


# --------------------------------------------------------------------------- work and connections
def test_strips_and_huge_process_sizes_are_refused_at_submission(server: ServerProcess) -> None:
    client = server.client()
    strip = client.upload(raw(1, 100000)).id
    jobs = len(client.jobs())
    status, answer = send(
        server.port,
        "POST",
        "/v1/jobs",
        {"Content-Type": "application/json"},
        json.dumps({"image": strip, "params": {"scale": 4}}).encode(),
    )
    assert status == 422 and "100000 times its short side" in str(answer["detail"]), answer
    # 64×3000 at ×1 makes a 0.2 MP result, but PASD would run it at 2.4 MP: over this server's 2 MP.
    tall = client.upload(raw(64, 3000)).id
    status, answer = send(
        server.port,
        "POST",
        "/v1/jobs",
        {"Content-Type": "application/json"},
        json.dumps({"image": tall, "params": {"scale": 1, "process_size": 768}}).encode(),
    )
    assert status == 413 and "run the diffusion at" in str(answer["detail"]), answer
    assert len(client.jobs()) == jobs


def test_idle_sockets_cannot_lock_clients_out(server: ServerProcess) -> None:
    import psutil

    def established() -> int:
        return sum(
            1
            for c in psutil.Process(server.process.pid).net_connections(kind="tcp")  # type: ignore[union-attr]
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
        )

    idle = []
    client = server.client()
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        for _ in range(10):
            assert client.health().status == "ok"
        assert client.upload(raw(16, 16)).width == 16
        # Past --max-connections 100 the oldest idle sockets were closed to make room, long before
        # the header timeout (5 s) closes them.
        assert wait_for(lambda: established() <= 101, timeout=3), established()
    finally:
        for sock in idle:
            sock.close()
    assert client.health().status == "ok"


def _own_address() -> str | None:
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_one_remote_address_cannot_take_every_connection(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Before any token check: a LAN host's sockets past its share are refused; others still get in."""
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    token_file = tmp_path / "token"
    token_file.write_text("a-token-for-this-test-only-0123456789\n")
    args = ("--token-file", str(token_file), "--max-client-connections", "5", "--header-timeout", "30")
    with ServerProcess(tiny_models["full"].parent, tmp_path, *args, host="0.0.0.0") as running:
        held = [socket.create_connection((address, running.port), timeout=10) for _ in range(5)]
        try:
            extra = socket.create_connection((address, running.port), timeout=10)
            answer = extra.recv(4096)
            extra.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"Too many connections" in answer, answer
            # The machine itself (loopback) and the token holder are not locked out.
            client = Client(f"http://127.0.0.1:{running.port}", token="a-token-for-this-test-only-0123456789")
            assert client.health().status == "ok"
        finally:
            for sock in held:
                sock.close()
        # Once the address's sockets are closed it may connect again.
        again = wait_for(lambda: _health_from(address, running.port), timeout=10)
        assert again == 200


def _health_from(address: str, port: int) -> int:
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", "/v1/health")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def test_connections_that_never_finish_their_headers_are_closed(server: ServerProcess) -> None:
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    slow.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = time.monotonic()
    try:
        assert silent.recv(1) == b""  # --header-timeout 5
        assert slow.recv(1) == b""
        assert 4 < time.monotonic() - started < 10
    finally:
        silent.close()
        slow.close()
    assert server.healthy()


# --------------------------------------------------------------------------- bodies
def test_whole_body_senders_read_the_refusal(server: ServerProcess) -> None:
    """urllib sends the whole body before reading: it must see 413/415, not a connection reset."""
    url = f"{server.url}/v1/images"
    for data, ctype, status in (
        (b"\0" * (10 << 20), "application/x-npy", 413),
        (b"x" * (3 << 20), "text/plain", 415),
    ):
        request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == status
        assert json.loads(refused.value.read())["detail"]


def test_chunked_json_over_the_limit_is_413(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = iter([b'{"image": "', *([b"a" * 65536] * 40), b'"}'])
    conn.request(
        "POST", "/v1/jobs", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True
    )
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["detail"]
    conn.close()


def test_an_aborted_upload_is_logged_in_one_plain_line(server: ServerProcess) -> None:
    log_file = Path(server.client().health().log_file or "")
    before = log_file.read_text()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: 4000000\r\n\r\n" + b"\x93NUMPY" + b"\0" * 100000
    )
    time.sleep(0.3)
    sock.close()
    added = wait_for(lambda: log_file.read_text()[len(before) :] if "aborted" in log_file.read_text() else "")
    assert "Traceback" not in added and "internal error" not in added.lower(), added
    assert not list((server.data / "images").glob(".upload-*"))
    assert server.healthy()


# --------------------------------------------------------------------------- files
def test_files_are_the_users_only(server: ServerProcess, stolen: dict[str, str], user_secret: Path) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    log_file = Path(server.client().health().log_file or "")
    assert mode(server.data) == 0o700 and mode(log_file.parent) == 0o700
    for path in (
        log_file,
        server.data / "images" / stolen["image"] / "pixels.npy",
        server.data / "jobs" / stolen["job"] / "result.npy",
        server.data / "jobs" / stolen["job"] / "job.json",
        user_secret,
    ):
        assert mode(path) & 0o077 == 0, (path, oct(mode(path)))


# --------------------------------------------------------------------------- full disk
def test_a_full_disk_fails_jobs_plainly_and_the_service_recovers(
    tiny_models: dict[str, Path], tmp_path: Path, small_disk: Path
) -> None:
    data = small_disk / "data"
    models = tiny_models["full"].parent
    with ServerProcess(models, tmp_path, "--abandon-after", "3", data=data) as running:
        client = running.client()
        image = client.upload(raw(64, 64)).id
        job = client.submit(image, {**SLOW, "steps": 30}, detached=True)
        wait_for(lambda: client.job(job.id).state == "running", timeout=60)
        filler = fill(small_disk)
        # The result cannot be written, nor the job's record: the job fails, the worker goes on.
        failed = wait_for(lambda: (j := client.job(job.id)).finished and j, timeout=120)
        assert failed.state == "failed" and "disk is full" in (failed.error or ""), failed
        # New work on the full disk: 507 in plain words, and no ghost job.
        before = {j.id for j in client.jobs()}
        folders = set(os.listdir(data / "jobs"))
        status, answer = send(
            running.port,
            "POST",
            "/v1/jobs",
            {"Content-Type": "application/json"},
            json.dumps({"image": image, "params": FAST}).encode(),
        )
        assert status == 507 and "disk is full" in str(answer["detail"]), answer
        assert {j.id for j in client.jobs()} == before and set(os.listdir(data / "jobs")) == folders
        status, answer = send(
            running.port, "POST", "/v1/images", {"Content-Type": "application/x-npy"}, raw(64, 64).to_npy()
        )
        assert status == 507 and "disk is full" in str(answer["detail"]), answer
        health = client.health()
        assert health.status == "ok" and not health.problems and health.warnings
        # Space again: the same server runs jobs, and its watchdog still cancels abandoned ones.
        filler.unlink()
        (small_disk / "filler-small").unlink()
        assert client.wait(client.submit(image, FAST).id).state == "succeeded"
        abandoned = client.submit(image, SLOW)
        wait_for(
            lambda: next(j for j in client.jobs() if j.id == abandoned.id).finished, timeout=60, interval=0.5
        )
        assert "abandoned" in (next(j for j in client.jobs() if j.id == abandoned.id).error or "")
        # Leftovers of failed writes and crashes, for the next start to remove.
        ghost = data / "jobs" / ("f" * 24)
        ghost.mkdir()
        (ghost / ".job-1234.json").write_text("{")
        stale = data / "images" / ".upload-deadbeef"
        stale.write_bytes(b"half")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fill(small_disk)
    with ServerProcess(models, tmp_path, data=data) as restarted:
        assert "warning: Only" in restarted.output and "free" in restarted.output
        client = restarted.client()
        health = client.health()
        assert health.status == "ok" and health.warnings
        assert not ghost.exists()
        wait_for(lambda: not stale.exists(), timeout=60)
        assert client.job(job.id).state == "failed"


# --------------------------------------------------------------------------- TLS
def test_tls_with_the_servers_own_certificate(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("openssl is not available")
    with ServerProcess(
        tiny_models["full"].parent, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)
    ) as running:
        assert running.url.startswith("https://127.0.0.1:")
        client = Client(running.url, cafile=cert)
        assert client.health().status == "ok"
        assert client.upload(raw(16, 16)).width == 16
        with pytest.raises(ServerUnreachable, match="certificate"):
            Client(running.url, cafile=None).health()
        with pytest.raises(ServerUnreachable):  # plain http to the https port
            Client(running.url.replace("https", "http")).health()


# --------------------------------------------------------------------------- where the secret lives
def test_the_client_finds_the_secret_where_the_server_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plug-in's client (standard library only) computes the config folder as platformdirs does."""
    from backend import paths
    from backend.client import SECRET_FILE, default_config_dir, default_data_dir, default_secret_file

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("GDU_CONFIG_DIR", "XDG_CONFIG_HOME", "GDU_SECRET_FILE", "GDU_DATA_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    cases = [{}, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, {"XDG_CONFIG_HOME": "relative/ignored"}]
    cases.append({"GDU_CONFIG_DIR": str(tmp_path / "over"), "GDU_DATA_DIR": str(tmp_path / "data")})
    cases += [{"XDG_DATA_HOME": str(tmp_path / "xdg-data")}, {"XDG_DATA_HOME": "relative/ignored"}]
    for case in cases:
        with monkeypatch.context() as m:
            for name, value in case.items():
                m.setenv(name, value)
            assert default_config_dir() == paths.config_dir(), case
            assert default_data_dir() == paths.data_dir(), case  # where the dialog's hand-off folders live
            assert default_secret_file() == paths.config_dir() / SECRET_FILE
    monkeypatch.setenv("GDU_SECRET_FILE", str(tmp_path / "elsewhere"))
    assert default_secret_file() == tmp_path / "elsewhere"
    # Made once, private from the start, and the same for every later caller.
    first = load_or_create_secret(tmp_path / "new" / "secret")
    assert load_or_create_secret(tmp_path / "new" / "secret") == first and len(first) == 64
    assert stat.S_IMODE((tmp_path / "new" / "secret").stat().st_mode) == 0o600


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stopped_worker_makes_the_queue_unhealthy(tmp_path: Path) -> None:
    """Nothing a job does should stop the worker; if something ever does, health must say so."""
    from backend.pipelines.params import RestoreParams
    from backend.service.images import ImageStore
    from backend.service.jobs import JobQueue

    class Interrupting:  # what no except clause of the worker may swallow (as Ctrl+C would be)
        def restore(self, *args: object, **kwargs: object) -> None:
            raise SystemExit("interrupted")

    images = ImageStore(tmp_path / "images", 10**6, 10**6, 3600.0)
    upload = tmp_path / "in.npy"
    np.save(upload, np.zeros((8, 8, 3), np.uint8))
    stored = images.ingest(upload, "application/x-npy")
    queue = JobQueue(Interrupting(), images, tmp_path / "jobs", 4, 10.0, 3600.0, 900.0)  # type: ignore[arg-type]
    queue.start()
    try:
        assert queue.problems() == []
        queue.submit(stored.id, None, None, RestoreParams(), detached=True)
        problems = wait_for(queue.problems, timeout=30)
        assert problems == ["the job worker is not running; restart the server"]
    finally:
        queue.stop(timeout=5)
