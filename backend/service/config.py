"""Settings of one server instance, with the defaults ``python -m backend serve`` uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import paths

API_VERSION = "v1"
DEFAULT_PORT = 7861


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path | None = None  # None: the per-user model folder
    data_dir: Path | None = None  # None: <per-user data>/server-<port>
    token: str | None = None  # required on every request when set
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "auto"
    queue_size: int = 16  # jobs waiting besides the running one; more answers 429
    max_megapixels: float = 100.0  # per uploaded image (a 10000×10000 scan)
    max_output_megapixels: float = 400.0  # per job result
    max_upload_bytes: int = 1 << 30
    # Decode budget per upload, from the header before any pixel is decoded: width × height × channels ×
    # bytes per sample of the decoded array (a 100 MP 16-bit RGBA scan is 800 MB).
    max_image_bytes: int = 800 * 10**6
    # A file may decode to at most this many times its own size, beyond the first 64 MiB (bombs).
    max_compression_ratio: float = 250.0
    abandon_after: float = 10.0  # seconds without a poll before a job is canceled
    result_ttl: float = 24 * 3600.0  # seconds a finished job's result is kept
    fetched_ttl: float = 15 * 60.0  # ... once it has been fetched in full
    upload_ttl: float = 6 * 3600.0  # seconds an upload is kept after its last use
    # Long side / short side: the engine raises the short side to its minimum, so a 1×100000 strip
    # would run at hundreds of megapixels; the planned process size is also held to the output limit.
    max_aspect_ratio: float = 64.0
    allowed_hosts: tuple[str, ...] = ()  # extra names clients may use in Host (besides the bound ones)
    proof_keys: tuple[bytes, ...] = ()  # prove to clients that this is their server (token, user secret)
    # Connections: a client must finish its request headers within header_timeout seconds; one
    # remote address holds at most max_client_connections; idle ones are shed past max_connections.
    header_timeout: float = 10.0
    max_connections: int = 1000
    max_client_connections: int = 64
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else paths.data_dir() / f"server-{self.port}"

    def resolved_models_dir(self) -> Path:
        return Path(self.models_dir).expanduser() if self.models_dir else paths.models_dir()
