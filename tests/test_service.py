"""The HTTP service, end to end: a real server process on 127.0.0.1 serving the tiny models,
driven through the one client module (and raw HTTP where a client would not send such a request)."""

from __future__ import annotations

import http.client
import io
import json
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from backend.client import (
    ApiError,
    AuthError,
    Client,
    JobCanceled,
    JobFailed,
    NotFound,
    QueueFull,
    RawImage,
    ServerUnreachable,
    ensure_server,
    gui_words,
)

from .service_server import ROOT, ServerProcess, wait_for

# Small and quick on the tiny models; process_size 256 is the smallest the pipeline allows.
FAST = {"task": "upscale", "scale": 2, "steps": 2, "process_size": 256, "seed": 7}
SLOW = {**FAST, "steps": 200, "process_size": 512}  # runs long enough to be caught running


def raw(array: np.ndarray) -> RawImage:
    if array.ndim == 2:
        array = array[..., None]
    h, w, c = array.shape
    return RawImage(w, h, c, str(array.dtype), array.tobytes())


def pixels(image: RawImage) -> np.ndarray:
    return np.frombuffer(image.data, dtype=image.dtype).reshape(image.height, image.width, image.channels)


def gradient(h: int, w: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:h, 0:w]
    planes = [(x / max(w - 1, 1)), (y / max(h - 1, 1)), ((x + y) / max(h + w - 2, 1)), np.full((h, w), 0.8)]
    return (np.stack(planes[:channels], axis=2) * top).round().astype(dtype)


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("service")
    limits = ("--max-megapixels", "4", "--max-output-megapixels", "4", "--max-upload-mb", "64")
    with ServerProcess(tiny_models["full"].parent, home, *limits) as running:
        yield running


@pytest.fixture(scope="module")
def strict(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a one-job queue that cancels jobs after 2 silent seconds."""
    home = tmp_path_factory.mktemp("strict")
    with ServerProcess(
        tiny_models["full"].parent, home, "--queue-size", "1", "--abandon-after", "2"
    ) as running:
        yield running


# --------------------------------------------------------------------------- jobs
def test_job_round_trip_with_progress_that_only_moves_forward(server: ServerProcess) -> None:
    client = server.client()
    health = client.health()
    assert health.api == "v1" and health.device.startswith("CPU")
    source = gradient(40, 56)
    seen = []
    job, result = client.run(raw(source), FAST, on_progress=seen.append)

    assert job.state == "succeeded" and job.result is not None
    assert (result.width, result.height, result.channels, result.dtype) == (112, 80, 3, "uint8")
    assert job.result["seed"] == 7 and job.result["model"] == "tiny-full"
    fractions = [j.progress.fraction for j in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {j.state for j in seen} <= {"queued", "running", "succeeded"}
    # The same result as PNG decodes to the same pixels.
    png = imagecodecs.png_decode(bytes(client.result(job.id, "png")))
    assert np.array_equal(png, pixels(result))
    # A preview of the finished job: a small PNG.
    preview = Image.open(io.BytesIO(client.preview(job.id) or b""))
    assert preview.format == "PNG" and max(preview.size) <= 256
    assert client.health().loaded_model == "tiny-full"


def test_sixteen_bit_rgba_keeps_depth_and_alpha(server: ServerProcess) -> None:
    client = server.client()
    source = gradient(24, 32, channels=4, dtype=np.uint16)
    source[:, :16, 3] = 0  # left half transparent
    _, result = client.run(raw(source), {**FAST, "scale": 1.5})
    out = pixels(result)
    assert out.dtype == np.uint16 and out.shape == (36, 48, 4)
    assert out[:, :20, 3].max() == 0 and out[:, 28:, 3].min() == np.uint16(0.8 * 65535 + 0.5)


def test_unset_parameters_take_the_models_own_values(server: ServerProcess) -> None:
    client = server.client()
    image = client.upload(raw(gradient(24, 24))).id
    unset = client.wait(client.submit(image, {**FAST, "guidance": None, "negative_prompt": None}).id)
    given = client.wait(client.submit(image, {**FAST, "guidance": 7.5}).id)  # PASD's own guidance
    assert unset.params["guidance"] is None  # the job records what was asked
    assert unset.result is not None and given.result is not None
    assert unset.result["negative_prompt"] == given.result["negative_prompt"] != ""
    assert np.array_equal(pixels(client.result_image(unset.id)), pixels(client.result_image(given.id)))


def test_upload_once_use_twice(server: ServerProcess) -> None:
    client = server.client()
    image = client.upload(raw(gradient(32, 32)))
    assert (image.width, image.height, image.channels, image.dtype) == (32, 32, 3, "uint8")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    mask_id = client.upload(raw(mask)).id
    params = {**FAST, "fidelity_fg": 1.5, "fidelity_bg": 0.5}
    first = client.wait(client.submit(image.id, params, mask=mask_id).id)
    second = client.wait(client.submit(image.id, params, mask=mask_id).id)
    assert first.id != second.id
    assert np.array_equal(pixels(client.result_image(first.id)), pixels(client.result_image(second.id)))
    # The pixels the server holds are the ones sent.
    assert np.array_equal(pixels(client.image_pixels(image.id)), gradient(32, 32))


def test_colorize_png_upload(server: ServerProcess) -> None:
    client = server.client()
    grey = gradient(32, 40, channels=1)
    png = imagecodecs.png_encode(grey[..., 0])
    image = client.upload(png, "image/png")
    job = client.wait(client.submit(image.id, {**FAST, "task": "colorize", "scale": 1}).id)
    assert job.result is not None and job.result["model"] == "tiny-color"
    out = pixels(client.result_image(job.id))
    assert out.shape == (32, 40, 3)


def test_two_clients_at_once(server: ServerProcess) -> None:
    results: dict[int, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            _, image = server.client().run(raw(gradient(16 + 8 * n, 24)), {**FAST, "seed": n})
            results[n] = (image.width, image.height)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors
    assert results == {0: (48, 32), 1: (48, 48)}


def test_cancel_while_running_then_next_job_runs(server: ServerProcess) -> None:
    client = server.client()
    image = client.upload(raw(gradient(64, 64))).id
    job = client.submit(image, SLOW)
    wait_for(lambda: client.job(job.id).progress.stage == "denoise", timeout=120)
    assert client.cancel(job.id).cancel_requested
    with pytest.raises(JobCanceled) as canceled:
        client.wait(job.id, interval=0.1)
    assert canceled.value.job.state == "canceled"
    assert canceled.value.job.progress.fraction < 1.0
    # The worker is free again.
    assert client.wait(client.submit(image, FAST).id).state == "succeeded"


def test_abandoned_job_is_canceled_but_detached_one_is_not(strict: ServerProcess) -> None:
    client = strict.client()
    image = client.upload(raw(gradient(64, 64))).id
    job = client.submit(image, SLOW)
    # Listing jobs is not polling them: the server must notice nobody asks about this one.
    state = wait_for(
        lambda: next(j for j in client.jobs() if j.id == job.id).state == "canceled" and client.jobs(),
        timeout=60,
        interval=0.5,
    )
    assert state
    abandoned = next(j for j in client.jobs() if j.id == job.id)
    assert "abandoned" in (abandoned.error or "")

    detached = client.submit(image, {**FAST, "steps": 6}, detached=True)
    done = wait_for(
        lambda: next(j for j in client.jobs() if j.id == detached.id).finished and client.jobs(), timeout=120
    )
    assert done
    assert client.job(detached.id).state == "succeeded"


def test_queue_full_answers_429(strict: ServerProcess) -> None:
    client = strict.client()
    image = client.upload(raw(gradient(64, 64))).id
    running = client.submit(image, SLOW)
    wait_for(lambda: client.job(running.id).state == "running", timeout=60)
    queued = client.submit(image, SLOW)
    assert client.job(queued.id).queue_position == 1
    with pytest.raises(QueueFull) as full:
        client.submit(image, SLOW)
    assert full.value.status == 429 and "queue is full" in full.value.detail
    for job in (queued, running):
        client.cancel(job.id)
    wait_for(lambda: all(client.job(j.id).finished for j in (queued, running)), timeout=60)
    assert strict.healthy()


# --------------------------------------------------------------------------- bad input
def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(imagecodecs.png_encode(np.zeros((1, 1, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


UPLOADS = [
    ("not an image", b"hello, world", "application/octet-stream", 422, "not an image"),
    ("empty body", b"", "image/png", 400, "empty"),
    ("text content type", b"hello", "text/plain", 415, "content type"),
    ("png declared as tiff", _png_claiming(1, 1), "image/tiff", 415, "declared as image/tiff"),
    ("truncated png", imagecodecs.png_encode(np.zeros((8, 8), np.uint8))[:40], "image/png", 422, "PNG"),
    ("huge image", _png_claiming(30000, 20000), "image/png", 413, "megapixels"),
    ("no pixels", _npy(np.zeros((0, 5, 3), np.uint8)), "application/x-npy", 422, "no pixels"),
    ("five channels", _npy(np.zeros((4, 4, 5), np.uint8)), "application/x-npy", 422, "channels"),
    ("nan pixels", _npy(np.full((4, 4, 3), np.nan, np.float32)), "application/x-npy", 422, "NaN"),
    ("int32 pixels", _npy(np.zeros((4, 4, 3), np.int32)), "application/x-npy", 422, "int32"),
]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "words"), [u[1:] for u in UPLOADS], ids=[u[0] for u in UPLOADS]
)
def test_bad_uploads_are_answered_and_the_server_stays_healthy(
    server: ServerProcess, body: bytes, ctype: str, status: int, words: str
) -> None:
    client = server.client()
    response = client_request(client, "POST", "/v1/images", body, ctype)
    assert response[0] == status, response
    assert words.lower() in response[1].lower()
    assert server.healthy()


def client_request(
    client: Client, method: str, path: str, body: bytes | None = None, ctype: str | None = None
) -> tuple[int, str]:
    """Raw HTTP, so the test controls every header; returns (status, detail)."""
    conn = http.client.HTTPConnection(client.host, client.port, timeout=60)
    headers = {"Content-Type": ctype} if ctype else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    text = response.read().decode("utf-8", "replace")
    conn.close()
    try:
        detail = json.loads(text)["detail"]
    except (ValueError, KeyError, TypeError):
        detail = text
    return response.status, str(detail)


def test_oversized_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/images")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(65 * 2**20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "limit" in json.loads(response.read())["detail"]
    conn.close()
    assert server.healthy()


@pytest.fixture(scope="module")
def uploaded(server: ServerProcess) -> dict[str, str]:
    client = server.client()
    return {
        "image": client.upload(raw(gradient(32, 48))).id,
        "small_mask": client.upload(raw(np.zeros((16, 16), np.uint8))).id,
        "big": client.upload(raw(gradient(1000, 1100))).id,
    }


def _job(image: str = "", **params: object) -> bytes:
    return json.dumps({"image": image, "params": {**FAST, **params}}).encode()


JOBS = [
    ("unknown image", lambda u: _job("0" * 24), 404, "no image with id"),
    ("malformed image id", lambda u: _job("../../etc/passwd"), 404, "not an image id"),
    ("mask of the wrong size", lambda u: json.dumps(
        {"image": u["image"], "mask": u["small_mask"], "params": FAST}).encode(), 422, "mask is 16×16"),
    ("steps out of range", lambda u: _job(u["image"], steps=0), 422, "steps must be between 1 and 200"),
    ("fidelity out of range", lambda u: _job(u["image"], fidelity_fg=2.5), 422, "fidelity_fg"),
    ("NaN guidance", lambda u: _job(u["image"]).replace(b'"seed": 7', b'"seed": 7, "guidance": NaN'),
     422, "guidance"),
    ("unknown parameter", lambda u: _job(u["image"], stepz=3), 422, "stepz"),
    ("colorize with a scale", lambda u: _job(u["image"], task="colorize"), 422, "scale must be 1"),
    ("unknown model", lambda u: json.dumps({"image": u["image"], "model": "nope", "params": FAST}).encode(),
     404, "unknown model 'nope'"),
    ("model path", lambda u: json.dumps({"image": u["image"], "model": "/etc", "params": FAST}).encode(),
     404, "unknown model"),
    ("result too large", lambda u: _job(u["big"], scale=2), 413, "megapixels"),
    ("prescaler path", lambda u: _job(u["image"], prescaler="/etc/passwd.pth"), 422, "unknown pre-scaler"),
    ("unknown prescaler", lambda u: _job(u["image"], prescaler="esrgan.pth"), 422, "upscalers"),
    ("not json", lambda u: b"{image: nope", 422, "json"),
    ("unknown field", lambda u: json.dumps({"image": u["image"], "colour": 1}).encode(), 422, "colour"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "status", "words"), [j[1:] for j in JOBS], ids=[j[0] for j in JOBS])
def test_bad_jobs_are_answered_and_the_server_stays_healthy(
    server: ServerProcess,
    uploaded: dict[str, str],
    make,
    status: int,
    words: str,  # type: ignore[no-untyped-def]
) -> None:
    response = client_request(server.client(), "POST", "/v1/jobs", make(uploaded), "application/json")
    assert response[0] == status, response
    assert words.lower() in response[1].lower(), response
    assert server.healthy()


JSON = "application/json"
OTHER = [
    ("job body as text", "POST", "/v1/jobs", b"{}", "text/plain", 415, "json"),
    ("unknown job", "GET", "/v1/jobs/" + "a" * 24, None, None, 404, "no job with id"),
    ("cancel unknown job", "POST", "/v1/jobs/nope/cancel", None, "application/json", 404, "no job"),
    ("body-less cancel", "POST", "/v1/jobs/nope/cancel", None, None, 415, "application/json"),
    ("unknown route", "GET", "/v1/nothing", None, None, 404, "/v1/nothing"),
    ("wrong method", "PUT", "/v1/health", None, "application/json", 405, "not allowed"),
    ("unknown download", "POST", "/v1/models/nope/download", None, JSON, 404, "not a downloadable"),
    (
        "form download",
        "POST",
        "/v1/models/pasd/download",
        b"a=b",
        "application/x-www-form-urlencoded",
        415,
        "json",
    ),
    ("unknown image info", "GET", "/v1/images/" + "b" * 24, None, None, 404, "no image"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "status", "words"), [o[1:] for o in OTHER], ids=[o[0] for o in OTHER]
)
def test_other_bad_requests(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
    status: int,
    words: str,
) -> None:
    response = client_request(server.client(), method, path, body, ctype)
    assert response[0] == status, response
    assert words.lower() in response[1].lower(), response
    assert server.healthy()


def test_wrong_content_type_keeps_the_connection_usable(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(3):  # the same kept-alive connection each time
        conn.request("POST", "/v1/jobs", body=b"x" * 5000, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        assert response.status == 415 and "JSON" in json.loads(response.read())["detail"]
        conn.request("GET", "/v1/health")
        health = conn.getresponse()
        assert health.status == 200 and json.loads(health.read())["api"] == "v1"
    conn.close()


def test_result_of_unfinished_job_and_bad_format(server: ServerProcess, uploaded: dict[str, str]) -> None:
    client = server.client()
    job = client.submit(uploaded["image"], SLOW)
    status, detail = client_request(client, "GET", f"/v1/jobs/{job.id}/result")
    assert status == 409 and "has no result" in detail
    status, detail = client_request(client, "GET", f"/v1/jobs/{job.id}/result?format=gif")
    assert status == 422 and "format" in detail
    client.cancel(job.id)
    with pytest.raises(JobCanceled):
        client.wait(job.id, interval=0.1)


def test_models_lists_installed_and_downloadable(server: ServerProcess) -> None:
    models = server.client().models()
    installed = {m["id"]: m for m in models["installed"]}
    assert set(installed) == {"tiny-full", "tiny-light", "tiny-color", "tiny-full-rrdb"}
    assert installed["tiny-color"]["tasks"] == ["colorize"]
    assert installed["tiny-full"]["default_for"] == ["upscale"]
    downloadable = {m["id"]: m for m in models["downloadable"]}
    assert downloadable["pasd"]["size_bytes"] > 1e9 and not downloadable["pasd"]["installed"]
    assert downloadable["pasd"]["licence"]
    # Each model's family and own settings (what unset parameters become), per task.
    full = installed["tiny-full"]
    assert full["family"] == "pasd" and full["defaults"]["upscale"]["steps"] == 20
    assert installed["tiny-color"]["defaults"]["colorize"]["negative_prompt"] == "b&w, color bleeding"
    sdxl = downloadable["pasd-sdxl"]
    assert sdxl["family"] == "pasd-sdxl" and sdxl["gpu_memory_gb"] >= 8 and "colorize" in sdxl["note"]
    # SUPIR's terms travel with it, and its download is refused until they are accepted.
    supir = downloadable["supir-v0q"]
    assert supir["terms"] == "supir" and "NON-COMMERCIAL" in supir["terms_text"]
    assert "non-commercial" in supir["licence"] and downloadable["pasd"]["terms"] is None
    linked = downloadable["supir-v0q-juggernaut"]  # other entries' files only: sized as those
    assert not linked["installed"] and linked["size_bytes"] > supir["size_bytes"] + 7e9
    with pytest.raises(ApiError, match="NON-COMMERCIAL") as refused:
        server.client().start_download("supir-v0q")
    assert refused.value.status == 403 and refused.value.code == "licence-not-accepted"
    with pytest.raises(ApiError):
        server.client().download_status("supir-v0q")  # nothing was started


def test_openapi_describes_the_api(server: ServerProcess) -> None:
    spec = json.loads(server.client().request("GET", "/openapi.json").body)
    paths = spec["paths"]
    for path in ("/v1/health", "/v1/images", "/v1/jobs", "/v1/jobs/{job_id}/result", "/v1/models"):
        assert path in paths
    params = spec["components"]["schemas"]["RestoreParameters"]["properties"]
    assert {"steps", "fidelity_fg", "fidelity_bg", "seed", "tile"} <= set(params)


# --------------------------------------------------------------------------- lifecycle
def test_restart_keeps_finished_results(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    models = tiny_models["full"].parent
    with ServerProcess(models, tmp_path) as first:
        client = first.client()
        job = client.wait(client.submit(client.upload(raw(gradient(24, 24))).id, FAST).id)
        expected = bytes(client.result(job.id))
        unfinished = client.submit(
            client.upload(raw(gradient(64, 64))).id, {**SLOW, "steps": 200}, detached=True
        )
        wait_for(lambda: client.job(unfinished.id).state == "running", timeout=60)
    with ServerProcess(models, tmp_path) as second:
        client = second.client()
        assert client.job(job.id).state == "succeeded"
        assert bytes(client.result(job.id)) == expected
        after = client.job(unfinished.id)
        assert after.state in ("failed", "canceled")


def test_second_start_on_the_same_port_says_already_running(server: ServerProcess, tmp_path: Path) -> None:
    again = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--port", str(server.port), "--data", str(tmp_path)],
        cwd=ROOT,
        env={**server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 3, again.stderr
    assert "already running" in again.stdout
    assert server.healthy()


def test_token_required_off_loopback(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    models = tiny_models["full"].parent
    env = {"GDU_CONFIG_DIR": str(tmp_path / "config")}
    refused = ServerProcess(models, tmp_path, host="0.0.0.0", env=env)
    with pytest.raises(RuntimeError, match=r"needs an\s+access token"):
        refused.start(timeout=60)
    made = subprocess.run(
        [sys.executable, "-m", "backend", "token"],
        cwd=ROOT,
        env={**refused.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 32 and (tmp_path / "config" / "token").stat().st_mode & 0o077 == 0
    with ServerProcess(models, tmp_path, host="0.0.0.0", env=env) as open_server:
        url = f"http://127.0.0.1:{open_server.port}"
        # Without the token health says only that the server is alive; everything else needs it.
        bare = Client(url, token="").health()
        assert bare.status == "ok" and bare.version is None and bare.log_file is None
        with pytest.raises(AuthError) as denied:
            Client(url, token="").jobs()
        assert denied.value.status == 401 and "access token" in denied.value.detail
        with pytest.raises(AuthError):
            Client(url, token="wrong").jobs()
        assert Client(url, token=token).health().version


def test_ensure_server_starts_one_and_then_reuses_it(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, folder in (("GDU_LOG_DIR", "logs"), ("GDU_CONFIG_DIR", "config"), ("GDU_DATA_DIR", "data")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(ROOT)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ServerUnreachable):
        Client(url).health()
    started = ensure_server(url, sys.executable, tiny_models["full"].parent, timeout=120)
    try:
        assert started.spawned is not None
        assert started.health().api == "v1"
        again = ensure_server(url, sys.executable)
        assert again.spawned is None
        assert (tmp_path / "logs" / f"server-{port}.log").is_file()
    finally:
        started.spawned.terminate()
        started.spawned.wait(30)


def test_ensure_server_reports_a_start_that_fails(tmp_path: Path) -> None:
    from backend.client import ServerStartError

    with pytest.raises(ServerStartError, match="exit code"):
        ensure_server("http://127.0.0.1:9", sys.executable, extra_args=["--queue-size", "many"], timeout=60)


def test_client_runs_in_a_bare_python(server: ServerProcess) -> None:
    """The client needs nothing beyond the standard library (GIMP's bundled Python has no pip)."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('client', {str(ROOT / 'backend' / 'client.py')!r})\n"
        "client = importlib.util.module_from_spec(spec); sys.modules['client'] = client\n"
        "spec.loader.exec_module(client)\n"
        f"c = client.Client({server.url!r}, token='')\n"
        "img = client.RawImage(2, 1, 3, 'uint8', bytes([1, 2, 3, 4, 5, 6]))\n"
        "info = c.upload(img)\n"
        "back = c.image_pixels(info.id)\n"
        "assert bytes(back.data) == bytes(img.data), back\n"
        "assert 'numpy' not in sys.modules\n"
        "print(c.health().api, info.width, info.height)\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["v1", "2", "1"]


def test_raw_image_npy_matches_numpy() -> None:
    for array in (
        gradient(5, 7, 4, np.uint16),
        gradient(3, 2, 1),
        np.random.default_rng(0).random((4, 3, 3)),
    ):
        array = array.astype(np.float32) if array.dtype == np.float64 else array
        image = raw(array)
        assert np.array_equal(np.load(io.BytesIO(image.to_npy())), array)
        back = RawImage.from_npy(_npy(array))
        assert (back.width, back.height, back.channels) == (array.shape[1], array.shape[0], array.shape[2])
        assert np.array_equal(pixels(back), array)
    with pytest.raises(ValueError, match="needs 12 bytes"):
        RawImage(2, 2, 3, "uint8", b"\0" * 11)


def test_unknown_job_through_the_client_is_not_found(server: ServerProcess) -> None:
    with pytest.raises(NotFound, match="No job with id"):
        server.client().job("f" * 24)


# --------------------------------------------------------------------------- the CLI through the service
def test_cli_runs_on_a_server_with_a_mask(server: ServerProcess, tmp_path: Path) -> None:
    from .conftest import run_backend

    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    imagecodecs.imwrite(source, gradient(24, 40))
    mask_pixels = np.zeros((24, 40), np.uint8)
    mask_pixels[:, :20] = 255
    imagecodecs.imwrite(mask, mask_pixels)
    out = tmp_path / "out.png"
    args = ("upscale", str(source), "-o", str(out), "--mask", str(mask), "--fidelity-fg", "1.2")
    fast = ("--fidelity-bg", "0.6", "--steps", "2", "--process-size", "256", "--seed", "3", "--quiet")
    result = run_backend(*args, *fast, "--server", server.url)
    assert result.returncode == 0, result.stderr
    assert imagecodecs.imread(out).shape == (48, 80, 3)
    assert "seed 3" in result.stdout and server.url in result.stdout

    down = run_backend(*args, "--force", *fast, "--server", "http://127.0.0.1:9")
    assert down.returncode == 1
    assert "does not answer" in down.stderr


def test_model_download_through_the_service(tmp_path: Path) -> None:
    """POST /v1/models/pasd/download fetches from the (fake) hub with progress; then jobs can use it."""
    from .fake_hub import FakeHub
    from .test_download import make_repos

    models = tmp_path / "models"
    models.mkdir()
    with FakeHub(make_repos(tmp_path)) as hub:
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        with ServerProcess(models, tmp_path, env=env) as running:
            client = running.client()
            started = client.start_download("pasd")
            assert started.model == "pasd" and started.bytes_total > 0
            done = wait_for(
                lambda: (s := client.download_status("pasd")).state != "running" and s, timeout=120
            )
            assert done.state == "succeeded", done.error
            assert done.bytes_done == done.bytes_total
            installed = {m["id"] for m in client.models()["installed"]}
            assert "pasd" in installed
            job = client.wait(client.submit(client.upload(raw(gradient(16, 16))).id, FAST, model="pasd").id)
            assert job.result is not None and job.result["model"] == "pasd"


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="needs Linux prlimit")
def test_out_of_memory_fails_the_job_and_the_next_one_runs(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A real allocation failure: the running server's address space is capped from outside."""
    import resource

    with ServerProcess(tiny_models["full"].parent, tmp_path) as running:
        client = running.client()
        small = client.upload(raw(gradient(64, 64))).id
        big = client.upload(raw(gradient(1500, 1500))).id
        params = {**FAST, "scale": 1, "steps": 1, "tile": 256, "vae_tile": 256}
        assert client.wait(client.submit(small, params).id).state == "succeeded"  # model loaded
        assert running.process is not None
        pid = running.process.pid
        vm_size = int(Path(f"/proc/{pid}/status").read_text().split("VmSize:")[1].split()[0]) * 1024
        resource.prlimit(pid, resource.RLIMIT_AS, (vm_size + 300 * 2**20, resource.RLIM_INFINITY))
        try:
            job = client.submit(big, {**params, "tile": 2048, "vae_tile": 2048})
            with pytest.raises(JobFailed) as failed:
                client.wait(job.id)
        finally:
            resource.prlimit(pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert "Ran out of memory" in str(failed.value) and "smaller tiles" in str(failed.value)
        assert running.healthy()
        assert client.wait(client.submit(small, params).id).state == "succeeded"


def test_delete_and_expiry(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with ServerProcess(tiny_models["full"].parent, tmp_path, "--keep-results", "3") as running:
        client = running.client()
        image = client.upload(raw(gradient(16, 16))).id
        job = client.wait(client.submit(image, FAST).id)
        assert (running.data / "jobs" / job.id / "result.npy").is_file()
        # Gone a few seconds after it finished: record, result file and folder.
        wait_for(lambda: not (running.data / "jobs" / job.id).exists(), timeout=30, interval=0.5)
        with pytest.raises(NotFound, match="expired"):
            client.result(job.id)

        other = client.submit(image, SLOW)
        status, detail = client_request(client, "DELETE", f"/v1/images/{image}")
        assert status == 409 and "used by a queued or running job" in detail
        client.delete_job(other.id)  # cancels it and forgets it
        with pytest.raises(NotFound):
            client.job(other.id)
        wait_for(lambda: client.health().queue["running"] == 0, timeout=60)
        client.delete_image(image)
        with pytest.raises(NotFound):
            client.image_info(image)
        assert running.healthy()


# --------------------------------------------------------------------------- estimates
def test_estimates_come_from_this_machines_finished_runs(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Before a model's first run there is no estimate (nothing is guessed); after it, the measured speed
    scales with the work, and it survives a restart of the server."""
    with ServerProcess(tiny_models["full"].parent, tmp_path) as running:
        client = running.client()
        first = client.estimate(56, 40, FAST)
        assert first.seconds is None and first.runs == 0 and first.model == "tiny-full"
        assert first.work == pytest.approx(2 * 256 * 360 / 1e6 * 2, abs=1e-3)  # steps × MP × guidance batch
        assert (first.process_height, first.process_width, first.tiles) == (256, 360, 1)
        job, _ = client.run(raw(gradient(40, 56)), FAST)
        assert job.result is not None
        after = client.estimate(56, 40, FAST)
        assert after.runs == 1 and after.seconds is not None
        assert 0 < after.seconds <= job.result["seconds"] + 0.1  # the model's loading is not counted
        twice = client.estimate(56, 40, {**FAST, "steps": 4})
        assert twice.seconds == pytest.approx(2 * after.seconds, abs=0.15)  # twice the denoising work
        assert twice.work == pytest.approx(2 * after.work, abs=1e-3)
        with pytest.raises(ApiError, match="does not fit") as bad:
            client.estimate(56, 40, {**FAST, "frame": [30, 0, 64, 40]})
        assert bad.value.status == 422
        with pytest.raises(ApiError, match="Unknown model") as unknown:
            client.estimate(56, 40, FAST, model="no-such-model")
        assert unknown.value.code == "unknown-model"  # a GUI words it itself (client.gui_words)
        assert "HTTP" not in gui_words(unknown.value) and "POST" not in gui_words(unknown.value)
    with ServerProcess(tiny_models["full"].parent, tmp_path) as restarted:
        assert restarted.client().estimate(56, 40, FAST).runs == 1
