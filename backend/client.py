"""The one client of the backend's HTTP API v1, in the standard library only.

GIMP on Windows and macOS bundles a Python without pip, so the plug-in cannot import numpy or an
HTTP library; this module is all it needs, and the dialog, the CLI and the tests use it too. It
imports nothing from the rest of the package, so it can be copied beside the plug-in as it is.

Pixels travel as ``.npy`` (:class:`RawImage` writes and reads it without numpy): self-describing,
8/16-bit and float, any channel count, and no encoding cost for large layers.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import secrets
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API = "/v1"
EXIT_ALREADY_RUNNING = 3  # `python -m backend serve` when the port already has our server
APP_NAME = "gimp-diffusion-upscale"
SECRET_FILE = "server-secret"


# --------------------------------------------------------------------------- errors
class ClientError(Exception):
    """Anything that went wrong talking to the backend; the message is for users."""


class ServerUnreachable(ClientError):
    """Nothing answers at the address (not started, wrong address, firewall)."""


class NotOurServer(ClientError):
    """Something answers at the address but could not prove it is the user's backend; nothing was sent."""


class ServerStartError(ClientError):
    """Starting a local server failed; the message carries the end of its own error output.

    ``summary`` is the one sentence and ``output`` the backend's last lines, for a GUI to lay out.
    """

    def __init__(self, summary: str, output: Iterable[str] = ()) -> None:
        self.summary = summary
        self.output = [line.rstrip() for line in output if line.strip()]
        super().__init__("\n".join([summary, *self.output]))


class ApiError(ClientError):
    """The server answered with an error status; ``detail`` is its plain-words explanation."""

    def __init__(self, status: int, detail: str, code: str | None = None) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail
        self.code = code  # what a GUI can name in its own words: "unknown-model", "no-model"


def gui_words(exc: ApiError, install: str = "Install… in the dialog") -> str:
    """An error answer as a GUI user should read it: no status number, no command-line flags."""
    if exc.code == "unknown-model":
        return (
            "The chosen model is not installed on the backend (any more). Choose another, or install it "
            f"with {install}."
        )
    if exc.code == "no-model":
        return f"No model for this task is installed on the backend yet. Use {install} to download one."
    return exc.detail


class AuthError(ApiError):
    """401: the server needs the access token (or a different one)."""


class NotFound(ApiError):
    """404: unknown image, job or model id (or it expired)."""


class QueueFull(ApiError):
    """429: the server's queue is full; try again later."""


class TooLarge(ApiError):
    """413: the image, the result or the body exceeds the server's limits."""


class JobFailed(ClientError):
    def __init__(self, job: JobInfo) -> None:
        super().__init__(job.error or "the job failed")
        self.job = job


class JobCanceled(ClientError):
    def __init__(self, job: JobInfo) -> None:
        super().__init__(job.error or "the job was canceled")
        self.job = job


_STATUS_ERRORS: dict[int, type[ApiError]] = {401: AuthError, 404: NotFound, 413: TooLarge, 429: QueueFull}


# --------------------------------------------------------------------------- pixels
_DTYPES = {"|u1": "uint8", "<u1": "uint8", "<u2": "uint16", "<f4": "float32"}
_DESCR = {"uint8": "|u1", "uint16": "<u2", "float32": "<f4"}
_SAMPLE_BYTES = {"uint8": 1, "uint16": 2, "float32": 4}


@dataclass(frozen=True)
class RawImage:
    """Interleaved pixels, rows top to bottom: what GEGL buffers and numpy arrays hold."""

    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    dtype: str  # uint8, uint16 or float32
    data: bytes | bytearray | memoryview

    def __post_init__(self) -> None:
        if self.dtype not in _SAMPLE_BYTES:
            raise ValueError(f"dtype must be one of {', '.join(_SAMPLE_BYTES)}, not {self.dtype!r}")
        if not 1 <= self.channels <= 4:
            raise ValueError(f"channels must be 1 to 4, not {self.channels}")
        expected = self.width * self.height * self.channels * _SAMPLE_BYTES[self.dtype]
        if len(memoryview(self.data).cast("B")) != expected:
            raise ValueError(
                f"{self.width}×{self.height}×{self.channels} {self.dtype} needs {expected} bytes, "
                f"got {len(memoryview(self.data).cast('B'))}"
            )

    def npy_header(self) -> bytes:
        """A version 1.0 ``.npy`` header; the pixel bytes follow it unchanged."""
        text = (
            f"{{'descr': '{_DESCR[self.dtype]}', 'fortran_order': False, "
            f"'shape': ({self.height}, {self.width}, {self.channels}), }}"
        )
        pad = 64 - (10 + len(text) + 1) % 64
        text += " " * (pad % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")

    def to_npy(self) -> bytes:
        return self.npy_header() + bytes(self.data)

    @classmethod
    def from_npy(cls, blob: bytes | bytearray | memoryview) -> RawImage:
        view = memoryview(blob).cast("B")
        if bytes(view[:6]) != b"\x93NUMPY":
            raise ClientError("The server sent something that is not a .npy image.")
        major = view[6]
        if major == 1:
            (length,), start = struct.unpack("<H", view[8:10]), 10
        else:
            (length,), start = struct.unpack("<I", view[8:12]), 12
        header = ast.literal_eval(bytes(view[start : start + length]).decode("latin1"))
        dtype = _DTYPES.get(header["descr"])
        shape = tuple(header["shape"])
        if dtype is None or header["fortran_order"] or len(shape) not in (2, 3):
            raise ClientError(f"Unsupported .npy layout from the server: {header}")
        height, width = shape[:2]
        channels = shape[2] if len(shape) == 3 else 1
        return cls(width, height, channels, dtype, view[start + length :])


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Health:
    api: str
    status: str = "ok"
    version: str | None = None  # the rest only for callers with the token (or when none is set)
    device: str | None = None
    dtype: str | None = None
    loaded_model: str | None = None
    memory: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    log_file: str | None = None
    disk_free_bytes: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Health:
        return _build(
            cls, {**data, "problems": data.get("problems") or [], "warnings": data.get("warnings") or []}
        )


@dataclass(frozen=True)
class ImageInfo:
    id: str
    width: int
    height: int
    channels: int
    dtype: str
    bytes: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        return _build(cls, data)


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int
    total: int
    fraction: float
    eta_seconds: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return _build(cls, data)


@dataclass(frozen=True)
class JobInfo:
    id: str
    state: str  # queued, running, succeeded, failed, canceled
    task: str
    model: str | None
    progress: Progress
    error: str | None = None
    result: dict[str, Any] | None = None  # width, height, channels, dtype, seed, prompt, ...
    queue_position: int | None = None
    cancel_requested: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "canceled")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobInfo:
        return _build(cls, {**data, "progress": Progress.from_json(data["progress"])})


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: the model has not run on that server yet
    runs: int
    work: float  # step-megapixels: the relative cost, known before any run
    model: str | None
    process_width: int
    process_height: int
    tiles: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Estimate:
        return _build(cls, data)


@dataclass(frozen=True)
class DownloadStatus:
    model: str
    state: str  # running, succeeded, failed
    bytes_done: int
    bytes_total: int
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DownloadStatus:
        return _build(cls, data)


def _build(cls: Any, data: dict[str, Any]) -> Any:
    """Take the fields the class knows; newer servers may send more."""
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- progress wording
STAGE_NAMES = {
    "queued": "waiting in the queue",
    "load": "loading the model",
    "prescale": "pre-scaling",
    "describe": "describing the picture",
    "encode": "encoding",
    "denoise": "denoising",
    "decode": "decoding",
    "finish": "finishing",
    "done": "done",
}


def format_duration(seconds: float) -> str:
    if seconds < 0.5:
        return "under 1 s"  # never "0 s" for something that takes time
    seconds = int(seconds + 0.5)  # half up: round() gives round(0.5) == 0
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def progress_text(job: JobInfo, what: str) -> str:
    """'Diffusion upscale: denoising, step 5 of 20, about 12 s left', for every host's progress line."""
    if job.state == "queued":
        position = f" (position {job.queue_position})" if job.queue_position else ""
        return f"{what}: waiting in the queue{position}"
    p = job.progress
    text = f"{what}: {STAGE_NAMES.get(p.stage, p.stage)}"
    if p.total > 1:
        text += f", step {p.step} of {p.total}"
    if job.state == "running" and p.eta_seconds is not None and p.eta_seconds >= 1:
        text += f", about {format_duration(p.eta_seconds)} left"
    return text


# --------------------------------------------------------------------------- client
@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes | bytearray

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A connection to one server; every method is one request (thread-safe: no shared socket).

    Before the first request that carries anything (the token, pixels, parameters), the server must
    prove it holds the token, or on this machine without one, the user's secret (``secret_file``):
    another user's or another program's listener on the port gets nothing (:class:`NotOurServer`).
    ``cafile`` names the certificate(s) to trust for an https server with its own certificate.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60.0,
        secret_file: str | os.PathLike[str] | None = None,
        cafile: str | os.PathLike[str] | None = None,
        verify: bool = True,
    ) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{url!r} is not a server address like http://127.0.0.1:7861")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.token = token if token is not None else os.environ.get("DIFFUSION_UPSCALE_TOKEN") or None
        self.timeout = timeout
        self.secret_file = Path(secret_file) if secret_file else default_secret_file()
        cafile = cafile or os.environ.get("DIFFUSION_UPSCALE_CA") or None
        self.ssl_context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        self.verify = verify
        self._verified = False
        self.spawned: subprocess.Popen[bytes] | None = None  # set by ensure_server when it started one

    # ------------------------------------------------------------------ transport
    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes | memoryview] | None = None,
        content_type: str | None = None,
        length: int | None = None,
        timeout: float | None = None,
    ) -> _Response:
        if self.verify and not self._verified:
            self.verify_server()
        return self._send(method, path, body, content_type, length, timeout, credentials=True)

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes | memoryview] | None = None,
        content_type: str | None = None,
        length: int | None = None,
        timeout: float | None = None,
        credentials: bool = True,
    ) -> _Response:
        headers = {"Accept": "application/json"}
        if self.token and credentials:
            headers["Authorization"] = f"Bearer {self.token}"
        if method in ("POST", "PUT", "PATCH") and not content_type:
            content_type = "application/json"  # the server refuses state changes of other types
        if content_type:
            headers["Content-Type"] = content_type
        if length is not None:
            headers["Content-Length"] = str(length)
        elif body is None and method in ("POST", "PUT"):
            headers["Content-Length"] = "0"
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout or self.timeout, context=self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                payload = _read_all(response)
            except ssl.SSLError as exc:
                self._verified = False
                raise ServerUnreachable(
                    f"The secure connection to {self.url} failed ({exc.reason or exc}). If the server uses "
                    "its own certificate, give that certificate file to the client (DIFFUSION_UPSCALE_CA)."
                ) from exc
            except (ConnectionError, TimeoutError, OSError, http.client.HTTPException) as exc:
                self._verified = False  # whoever answers next time must prove itself again
                raise ServerUnreachable(
                    f"The backend at {self.url} does not answer ({type(exc).__name__}: {exc}). "
                    "Start it with `python -m backend serve`, or check the address."
                ) from exc
        finally:
            conn.close()
        result = _Response(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)
        if result.status >= 400:
            code = None
            try:
                answer = result.json()
                detail = str(answer["detail"])
                code = str(answer["code"]) if answer.get("code") else None
            except (ValueError, KeyError, TypeError, AttributeError):
                detail = bytes(payload[:300]).decode("utf-8", "replace") or response.reason
            raise _STATUS_ERRORS.get(result.status, ApiError)(result.status, detail, code)
        return result

    def _json(self, method: str, path: str, data: Any = None) -> Any:
        body = None if data is None else json.dumps(data, allow_nan=False).encode()
        ctype = None if data is None else "application/json"
        return self.request(method, path, body, ctype, None if body is None else len(body)).json()

    # ------------------------------------------------------------------ server
    def proof_keys(self) -> tuple[list[bytes], str]:
        """Keys a server of ours can prove it holds (the token, the user's secret), and their names."""
        keys, names = [], []
        if self.token:
            keys.append(self.token.encode())
            names.append("your access token")
        try:
            secret = self.secret_file.read_bytes().strip()
        except OSError:
            secret = b""
        if secret:
            keys.append(secret)
        names.append(f"your per-user key ({self.secret_file})")
        return keys, " or ".join(names)

    def verify_server(self) -> Health:
        """Challenge the server (sending no token and nothing of the user's) to prove it holds a key."""
        keys, what = self.proof_keys()
        if not keys and not is_loopback(self.host):
            # A remote server without our token answers 401 to everything anyway; nothing to protect.
            self._verified = True
            return self._health(credentials=False)
        challenge = secrets.token_hex(16)
        hint = (
            " If the token changed, copy the current one (`python -m backend token` on the server machine)."
            if self.token
            else ""
        )
        stranger = NotOurServer(
            f"The program answering at {self.url} is not your GIMP Diffusion Upscale backend: it could not "
            f"prove that it holds {what}. Nothing was sent to it. It may be another user's backend or "
            f"another program using port {self.port}: stop it, or set another port in the plug-in's "
            f"settings (DIFFUSION_UPSCALE_URL).{hint}"
        )
        try:
            response = self._send("GET", f"{API}/health?challenge={challenge}", credentials=False)
            data = response.json()
            proofs = [str(p) for p in data.get("proofs") or []]
        except ServerUnreachable:
            raise
        except (ClientError, ValueError, AttributeError, TypeError) as exc:
            raise stranger from exc
        expected = [health_proof(key, challenge) for key in keys]
        if not any(hmac.compare_digest(p, e) for p in proofs for e in expected):
            raise stranger
        self._verified = True
        return Health.from_json(data)

    def _health(self, credentials: bool = True) -> Health:
        return Health.from_json(self._send("GET", f"{API}/health", credentials=credentials).json())

    def health(self) -> Health:
        """The server's state (verified first; details need the token where the server has one)."""
        if self.verify and not self._verified:
            answer = self.verify_server()
            if answer.version is not None:
                return answer
        return self._health()

    def shutdown(self) -> None:
        """Stop the server (its running job is canceled), e.g. to start it again with new settings."""
        self.request("POST", f"{API}/server/shutdown")

    def models(self) -> dict[str, list[dict[str, Any]]]:
        """``{"installed": [...], "downloadable": [...]}`` as the server lists them."""
        return self._json("GET", f"{API}/models")

    def start_download(self, model_id: str, accept_licence: tuple[str, ...] = ()) -> DownloadStatus:
        """Start a model download; ``accept_licence`` names terms the user has read and accepted."""
        query = "".join(f"{'&' if i else '?'}accept_licence={_q(t)}" for i, t in enumerate(accept_licence))
        return DownloadStatus.from_json(self._json("POST", f"{API}/models/{_q(model_id)}/download{query}"))

    def download_status(self, model_id: str) -> DownloadStatus:
        return DownloadStatus.from_json(self._json("GET", f"{API}/models/{_q(model_id)}/download"))

    # ------------------------------------------------------------------ images
    def upload(
        self, image: RawImage | bytes | str | os.PathLike[str], content_type: str | None = None
    ) -> ImageInfo:
        """Upload pixels (:class:`RawImage`), file bytes, or a file path; returns its id and size."""
        if isinstance(image, RawImage):
            header = image.npy_header()
            data = memoryview(image.data).cast("B")
            response = self.request(
                "POST", f"{API}/images", iter((header, data)), "application/x-npy", len(header) + len(data)
            )
        else:
            blob = Path(image).read_bytes() if isinstance(image, (str, os.PathLike)) else bytes(image)
            response = self.request(
                "POST", f"{API}/images", blob, content_type or "application/octet-stream", len(blob)
            )
        return ImageInfo.from_json(response.json())

    def image_info(self, image_id: str) -> ImageInfo:
        return ImageInfo.from_json(self._json("GET", f"{API}/images/{_q(image_id)}"))

    def image_pixels(self, image_id: str) -> RawImage:
        return RawImage.from_npy(self.request("GET", f"{API}/images/{_q(image_id)}/pixels").body)

    def delete_image(self, image_id: str) -> None:
        self.request("DELETE", f"{API}/images/{_q(image_id)}")

    # ------------------------------------------------------------------ jobs
    def submit(
        self,
        image: str,
        params: dict[str, Any] | None = None,
        mask: str | None = None,
        model: str | None = None,
        detached: bool = False,
    ) -> JobInfo:
        """Queue a job on uploaded ids; ``params`` are the pipeline's (task, scale, prompt, ...)."""
        request = {"image": image, "mask": mask, "model": model, "params": params or {}, "detached": detached}
        return JobInfo.from_json(self._json("POST", f"{API}/jobs", request))

    def estimate(
        self, width: int, height: int, params: dict[str, Any] | None = None, model: str | None = None
    ) -> Estimate:
        """How long a job on an image of this size would take on this server (measured, not guessed)."""
        request = {"width": width, "height": height, "model": model, "params": params or {}}
        return Estimate.from_json(self._json("POST", f"{API}/estimate", request))

    def job(self, job_id: str) -> JobInfo:
        """The job's state; asking counts as the heartbeat that keeps a job alive."""
        return JobInfo.from_json(self._json("GET", f"{API}/jobs/{_q(job_id)}"))

    def jobs(self) -> list[JobInfo]:
        return [JobInfo.from_json(j) for j in self._json("GET", f"{API}/jobs")["jobs"]]

    def cancel(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(self._json("POST", f"{API}/jobs/{_q(job_id)}/cancel"))

    def delete_job(self, job_id: str) -> None:
        self.request("DELETE", f"{API}/jobs/{_q(job_id)}")

    def preview(self, job_id: str) -> bytes | None:
        """A small PNG of the job's current state, or None before there is one."""
        response = self.request("GET", f"{API}/jobs/{_q(job_id)}/preview")
        return bytes(response.body) if response.status == 200 and response.body else None

    def result(self, job_id: str, fmt: str = "npy") -> bytes | bytearray:
        """The finished result file (npy, png or tiff) at the input's bit depth."""
        return self.request("GET", f"{API}/jobs/{_q(job_id)}/result?format={_q(fmt)}").body

    def result_image(self, job_id: str) -> RawImage:
        return RawImage.from_npy(self.result(job_id, "npy"))

    def foreground(self, job_id: str) -> RawImage:
        """The soft foreground a finished job used when faces were part of it (8-bit grey, the
        result's size), e.g. for a channel the user can refine; NotFound-like ApiError (409) otherwise."""
        return RawImage.from_npy(self.request("GET", f"{API}/jobs/{_q(job_id)}/foreground?format=npy").body)

    def faces(self, image_id: str) -> list[dict[str, Any]]:
        """Faces found in an uploaded image: [{x, y, width, height, score, kind}], largest first."""
        return list(self._json("POST", f"{API}/faces", {"image": image_id})["faces"])

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[JobInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        interval: float = 0.5,
    ) -> JobInfo:
        """Poll until the job ends; JobFailed / JobCanceled unless it succeeded."""
        canceling = False
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.finished:
                break
            if not canceling and should_cancel is not None and should_cancel():
                self.cancel(job_id)
                canceling = True
            time.sleep(interval)
        if job.state == "failed":
            raise JobFailed(job)
        if job.state == "canceled":
            raise JobCanceled(job)
        return job

    def run(
        self,
        image: RawImage | bytes | str | os.PathLike[str],
        params: dict[str, Any] | None = None,
        mask: RawImage | bytes | str | os.PathLike[str] | None = None,
        model: str | None = None,
        on_progress: Callable[[JobInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> tuple[JobInfo, RawImage]:
        """Upload, submit, wait and fetch in one call; returns the finished job and its pixels."""
        image_id = self.upload(image).id
        mask_id = self.upload(mask).id if mask is not None else None
        job = self.submit(image_id, params, mask_id, model)
        job = self.wait(job.id, on_progress, should_cancel)
        return job, self.result_image(job.id)


def _q(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


def _read_all(response: http.client.HTTPResponse) -> bytes | bytearray:
    """Read the body into one preallocated buffer when its length is known (large results)."""
    length = response.getheader("Content-Length")
    if length is None:
        return response.read()
    buffer = bytearray(int(length))
    view = memoryview(buffer)
    done = 0
    while done < len(buffer):
        n = response.readinto(view[done:])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:done]), len(buffer) - done)
        done += n
    return buffer


# --------------------------------------------------------------------------- the dialog's job file
DIALOG_JOB_VERSION = 1
DIALOG_EXIT_APPLIED = 0
DIALOG_EXIT_CANCELED = 3  # the user closed the dialog without applying; nothing was written


@dataclass
class DialogJob:
    """What a host (the GIMP plug-in) hands the dialog: ``python -m gui --job FILE``.

    The dialog reads ``image`` (and ``mask``) as ``.npy``, lets the user set up and run the job
    on ``server``, and on Apply writes the result pixels to ``result`` (``.npy``) and a
    :class:`DialogAnswer` to ``answer``, then exits with :data:`DIALOG_EXIT_APPLIED`. On Cancel it
    writes nothing and exits with :data:`DIALOG_EXIT_CANCELED`.
    """

    task: str  # upscale | colorize
    image: str  # .npy path: H×W×C pixels of the region to process
    result: str  # .npy path the dialog writes the result to
    answer: str  # .json path the dialog writes the DialogAnswer to
    mask: str | None = None  # .npy path: the selection over the region (H×W×1), or None
    server: str = "http://127.0.0.1:7861"
    token: str | None = None
    python: str | None = None  # the backend environment's Python, to start a local server
    models: str | None = None
    title: str = ""  # shown in the window title (the image's name)
    settings: dict[str, Any] = field(default_factory=dict)  # the host's last values, to start from
    host_pid: int | None = None  # the host's process: when it ends (GIMP's Cancel), the dialog stops too
    about: str = ""  # what is being worked on, in words (image, layer, selection), shown in the dialog
    window: dict[str, Any] | None = None  # the host window to stay above: {"system": "x11", "id": 123}
    stop: str | None = None  # a file the host writes (with a reason) when the dialog must stop and close
    key: str = ""  # the input's fingerprint: an undelivered result is offered again for the same input
    undelivered: str | None = None  # a finished result the host never received, offered again
    version: int = DIALOG_JOB_VERSION

    def write(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DialogJob:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClientError(f"Cannot read the job file {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != DIALOG_JOB_VERSION:
            raise ClientError(f"The job file {path} is not a version {DIALOG_JOB_VERSION} dialog job.")
        missing = [k for k in ("task", "image", "result", "answer") if not data.get(k)]
        if missing or data["task"] not in ("upscale", "colorize"):
            raise ClientError(f"The job file {path} lacks {', '.join(missing) or 'a valid task'}.")
        return _build(cls, data)


@dataclass
class DialogAnswer:
    """What the dialog hands back on Apply: the parameters used and the finished job."""

    params: dict[str, Any]  # the backend parameters of the final run (RestoreParams' names)
    options: dict[str, Any]  # host-side choices: output ("layer" | "image"), color_mode, model
    job: dict[str, Any]  # id and result info (seed, model, prompt, size, ...)

    def write(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DialogAnswer:
        try:
            return _build(cls, json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ClientError(f"Cannot read the dialog's answer {path}: {exc}") from exc


def read_npy(path: str | os.PathLike[str]) -> RawImage:
    return RawImage.from_npy(Path(path).read_bytes())


def write_npy(path: str | os.PathLike[str], image: RawImage) -> None:
    """Atomically: a reader never sees a half-written file."""
    tmp = Path(f"{path}.tmp")
    with tmp.open("wb") as fh:
        fh.write(image.npy_header())
        fh.write(memoryview(image.data).cast("B"))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- hand-off folders
UNDELIVERED_DAYS = 14  # an undelivered result is offered again for this long, then removed


def process_alive(pid: int) -> bool:
    """True while the process ``pid`` exists (standard library only; never signals it)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate it there
        import ctypes

        kernel = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        try:
            return bool(kernel.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        finally:
            kernel.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) has ended too
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class Undelivered:
    """A finished result the host never received (its plug-in ended, its image closed)."""

    folder: Path
    title: str
    finished: float  # time.time() when it was kept
    seed: int | None
    what: str  # "Diffusion upscale ×2", "Diffusion colorize"

    @property
    def result(self) -> Path:
        return self.folder / "result.npy"

    @property
    def answer(self) -> Path:
        return self.folder / "answer.json"

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> Undelivered | None:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if not (folder / "result.npy").is_file() or not (folder / "answer.json").is_file():
                return None
            return cls(folder, str(meta.get("title", "")), float(meta["finished"]), meta.get("seed"),
                       str(meta.get("what", "")))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Handoff:
    """The folders through which a host and the dialog exchange pixels, and where results wait.

    Each run gets a private folder under ``runs/`` (job file, pixels, result, answer), removed when
    the run ends. A folder whose host process has died is swept at the next run: a finished result
    in it moves to ``undelivered/<input key>`` and is offered when the same input is opened again;
    anything else is deleted. So no temporary folder outlives its run, and no finished work is lost.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_data_dir() / "dialog"
        self.runs = self.root / "runs"
        self.kept = self.root / "undelivered"

    def new_run(self) -> Path:
        self.runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = self.runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        folder.mkdir(mode=0o700)
        return folder

    def sweep(self, now: float | None = None) -> list[Path]:
        """Runs whose host has died: results kept, the rest removed; old undelivered results dropped."""
        import shutil

        now = time.time() if now is None else now
        kept: list[Path] = []
        for folder in sorted(self.runs.glob("*")) if self.runs.is_dir() else []:
            if not folder.is_dir() or folder.is_symlink():
                folder.unlink(missing_ok=True)
                continue
            try:
                job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
                pid = int(job.get("host_pid") or 0)
            except (OSError, ValueError, TypeError, AttributeError):
                job, pid = {}, 0
            if pid and pid != os.getpid() and process_alive(pid):
                continue  # another plug-in's run, still going
            if job.get("key") and (folder / "answer.json").is_file() and (folder / "result.npy").is_file():
                with contextlib.suppress(
                    OSError, ValueError, TypeError, AttributeError
                ):  # unreadable: dropped
                    kept.append(self.keep(folder, str(job["key"]), str(job.get("title", "")), now))
            shutil.rmtree(folder, ignore_errors=True)
        for folder in self.kept.glob("*") if self.kept.is_dir() else []:
            found = Undelivered.read(folder)
            if found is None or now - found.finished > UNDELIVERED_DAYS * 86400:
                shutil.rmtree(folder, ignore_errors=True)
        return kept

    def keep(self, run: Path, key: str, title: str, now: float | None = None) -> Path:
        """Move a run's finished result to ``undelivered/<key>`` (replacing an older one for that input)."""
        import shutil

        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not an input key: {key!r}")
        answer = json.loads((run / "answer.json").read_text(encoding="utf-8"))
        params, job = answer.get("params", {}), answer.get("job", {})
        scale = round(float(params.get("scale", 1)))
        what = f"Diffusion upscale ×{scale}" if params.get("task") == "upscale" else "Diffusion colorize"
        self.kept.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = self.kept / f".{key}.{secrets.token_hex(3)}"
        staging.mkdir(mode=0o700)
        for name in ("result.npy", "answer.json"):
            shutil.copyfile(run / name, staging / name)
        meta = {"title": title, "finished": time.time() if now is None else now, "seed": job.get("seed"),
                "what": what}  # fmt: skip
        (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        target = self.kept / key
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        return target

    def undelivered(self, key: str) -> Undelivered | None:
        return Undelivered.read(self.kept / key) if key and (self.kept / key).is_dir() else None

    def discard(self, key: str) -> None:
        import shutil

        if key:
            shutil.rmtree(self.kept / key, ignore_errors=True)


def input_key(*parts: bytes | str) -> str:
    """A fingerprint of a run's input (task, region, pixels, mask): equal input, equal key."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------- starting a server
def health_proof(key: bytes, challenge: str) -> str:
    """HMAC-SHA256 of the challenge under ``key``: what only the real server can answer."""
    return hmac.new(key, b"gdu-health-v1:" + challenge.lower().encode(), hashlib.sha256).hexdigest()


def _user_dir(override: str, xdg: str, fallback: str) -> Path:
    """A per-user folder where platformdirs puts it (``backend.paths``), without platformdirs."""
    value = os.environ.get(override)
    if value:
        return Path(value).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    base = os.environ.get(xdg, "").strip()  # a relative one is ignored, as platformdirs does
    return Path(base) / APP_NAME if os.path.isabs(base) else Path.home() / fallback / APP_NAME


def default_config_dir() -> Path:
    """The per-user config folder, as ``backend.paths.config_dir`` computes it."""
    return _user_dir("GDU_CONFIG_DIR", "XDG_CONFIG_HOME", ".config")


def default_data_dir() -> Path:
    """The per-user data folder, as ``backend.paths.data_dir`` computes it."""
    return _user_dir("GDU_DATA_DIR", "XDG_DATA_HOME", ".local/share")


def default_secret_file() -> Path:
    """Where the user's server secret lives (``GDU_SECRET_FILE`` overrides; shared by server and clients)."""
    override = os.environ.get("GDU_SECRET_FILE")
    return Path(override).expanduser() if override else default_config_dir() / SECRET_FILE


def load_or_create_secret(path: str | os.PathLike[str] | None = None) -> bytes:
    """The user's secret, made once: readable by the user only from the moment it exists."""
    path = Path(path) if path else default_secret_file()
    with contextlib.suppress(OSError):
        existing = path.read_bytes().strip()
        if existing:
            return existing
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(value + b"\n")
        try:
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


def _tail(output: Any, lines: int = 8) -> list[str]:
    """The last lines a starting backend wrote (its own output, captured; not an older log)."""
    output.seek(0)
    return output.read().decode("utf-8", "replace").strip().splitlines()[-lines:]


def repair_advice(python: str | os.PathLike[str] | None) -> str:
    """The next step when the backend environment does not work: the doctor, then the installer."""
    if python and Path(python).is_file():
        return (
            f'To see what is wrong, run the doctor in a terminal: "{python}" -m backend doctor. To repair '
            "the backend environment, run the installer again (python3 installer/install.py)."
        )
    return "Run the installer again (python3 installer/install.py) to repair the backend environment."


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_server(
    url: str,
    python: str | os.PathLike[str] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    timeout: float = 180.0,
    extra_args: Iterable[str] = (),
    on_wait: Callable[[float], None] | None = None,
) -> Client:
    """A client for a server that answers: the running one, or one started here and waited for.

    Only a loopback address is started locally (``python -m backend serve`` with ``python``, the
    backend environment's interpreter); a remote one must be started on its own machine. The
    server is detached from this process, so it outlives a plug-in that GIMP kills.
    """
    client = Client(url, token=token)
    try:
        client.health()
        return client
    except ServerUnreachable:
        pass  # NotOurServer goes up: the port is taken by a stranger, starting one here cannot help
    if not is_loopback(client.host):
        raise ServerUnreachable(
            f"The backend at {client.url} does not answer, and it is not on this machine, so it cannot be "
            "started from here: start it there with `python -m backend serve --host ...`."
        )
    command = [
        str(python or sys.executable),
        "-m",
        "backend",
        "serve",
        "--host",
        client.host,
        "--port",
        str(client.port),
    ]
    if models_dir:
        command += ["--models", str(models_dir)]
    command += list(extra_args)
    # GIMP's own Python's settings would break the backend environment's interpreter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    detach: dict[str, Any] = {"start_new_session": True}
    if os.name == "nt":
        detach = {"creationflags": 0x00000008 | 0x00000200 | 0x08000000}  # detached, new group, no window
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, env=env, **detach
            )
        except OSError as exc:
            raise ServerStartError(f"Could not start the backend with {command[0]}: {exc}") from exc
        client.spawned = process
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            try:
                client.health()
                return client
            except ServerUnreachable:
                pass
            code = process.poll()
            if code is not None and code != EXIT_ALREADY_RUNNING:
                raise ServerStartError(
                    f"The backend stopped while starting (exit code {code}). Its last words:",
                    _tail(errors),
                )
            if elapsed > timeout:
                with contextlib.suppress(OSError):
                    process.terminate()
                raise ServerStartError(
                    f"The backend did not answer within {timeout:.0f} seconds of starting. Its last words:",
                    _tail(errors),
                )
            if on_wait is not None:
                on_wait(elapsed)
            time.sleep(0.25)
