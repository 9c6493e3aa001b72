"""A real ``python -m backend serve`` in a child process, for the service tests and benchmarks."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import imagecodecs
import numpy as np
import psutil
import tifffile

from backend.client import Client, ClientError

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """Starts on a free port (``--port 0``), reads the port from the "Serving on" line, stops cleanly."""

    def __init__(
        self,
        models: Path,
        home: Path,
        *args: str,
        data: Path | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.home = home
        self.data = data or home / "data"
        self.env = {
            **os.environ,
            "GDU_LOG_DIR": str(home / "logs"),
            "GDU_CONFIG_DIR": str(home / "config"),
            "GDU_DATA_DIR": str(home / "user-data"),
            # Tiny models gain nothing from threads; on a 2-core runner spin-waits would cost seconds.
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self.command = [
            sys.executable, "-m", "backend", "serve", "--host", host, "--port", str(port),
            "--models", str(models), "--data", str(self.data), *args,
        ]  # fmt: skip
        # The per-user secret this server proves it holds; its clients check it (client.py).
        self.secret_file = Path(
            self.env.get("GDU_SECRET_FILE") or Path(self.env["GDU_CONFIG_DIR"]) / "server-secret"
        )
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("Serving on "):
                    self.url = line.split()[2]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + self.output)
        return self

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token=token or "", timeout=60, secret_file=self.secret_file)

    def healthy(self, token: str | None = None) -> bool:
        try:
            self.client(token).health()
        except ClientError:
            return False
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class RssSampler:
    """A process's resident memory (bytes) before a block, every ``interval`` during it, and after.

    A decompression bomb shows in ``peak``, memory kept after a failure in ``after``.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        rss = self.process.memory_info().rss
        self.samples.append(rss)
        self.peak = max(self.peak, rss)
        return rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._rss()
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self.before = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(psutil.Error):
            self.after = self._rss()


def zero_tiff(shape: tuple[int, int, int], dtype: type, tile: int = 1024, **options: object) -> bytes:
    """A tiled, zlib-compressed TIFF of zeros, written as one compressed tile repeated: a few MB that
    declare gigabytes, built without ever holding the image."""
    height, width, samples = shape
    encoded = imagecodecs.zlib_encode(np.zeros((tile, tile, samples), dtype).tobytes(), level=9)
    count = -(-height // tile) * -(-width // tile)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        (encoded for _ in range(count)),
        shape=shape,
        dtype=dtype,
        tile=(tile, tile),
        compression="zlib",
        **options,
    )
    return buffer.getvalue()


class Squatter:
    """Another program on a loopback port: answers every request with ``answer`` and keeps every byte."""

    def __init__(self, answer: bytes = b'{"status":"ok","api":"v1"}') -> None:
        self.answer = answer
        self.received = bytearray()
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                with contextlib.suppress(OSError):  # whatever else came before the answer is theirs too
                    conn.settimeout(0.05)
                    request += conn.recv(1 << 20)
                self.received += request
                self.requests += 1
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(self.answer)}\r\n\r\n".encode()
                    + self.answer
                )

    def close(self) -> None:
        self.sock.close()
