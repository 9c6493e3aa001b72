"""``python -m backend serve``: bind, check the token rule, set up logging, run uvicorn.

The listening socket is bound here, before the models and uvicorn start, so two starts on one port
cannot race: the second finds the port taken, asks it for its health, and says the server is
already running (exit code 3) or that another program holds the port (exit code 1).
"""

from __future__ import annotations

import argparse
import errno
import logging
import logging.handlers
import os
import secrets
import socket
import sys
from pathlib import Path

from .. import paths
from ..client import EXIT_ALREADY_RUNNING, default_secret_file, is_loopback, load_or_create_secret
from .config import DEFAULT_PORT, ServerConfig

log = logging.getLogger("backend")

TOKEN_FILE = "token"


def token_path() -> Path:
    return paths.config_dir() / TOKEN_FILE


def read_token(path: Path | None = None) -> str | None:
    path = path or token_path()
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def create_token(path: Path | None = None, replace: bool = False) -> str:
    """The access token for non-loopback serving, made once (readable by the user only)."""
    path = path or token_path()
    if not replace and (existing := read_token(path)):
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return token


def private_folder(folder: Path) -> Path:
    """Create ``folder`` (and parents) readable by the user only; tighten it if it exists already."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name != "nt":
        try:
            if folder.stat().st_uid == os.getuid() and folder.stat().st_mode & 0o077:
                folder.chmod(0o700)
        except OSError:
            pass
    return folder


def setup_logging(port: int, verbose: bool) -> Path | None:
    """A rotating log file per port in the per-user log folder; the console gets warnings (or all).

    A full disk must not stop the server: then it logs to the console only, and a record that
    cannot be written later is dropped without a traceback.
    """
    logging.raiseExceptions = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO if not verbose else logging.DEBUG)
    handlers: list[logging.Handler] = [console]
    log_file: Path | None = paths.log_dir() / f"server-{port}.log"
    try:
        private_folder(paths.log_dir())
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=5 << 20, backupCount=3, encoding="utf-8"
        )
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(file_handler)
    except OSError as exc:
        print(
            f"warning: cannot write the log file {log_file} ({exc.strerror or exc}); logging to the console",
            file=sys.stderr,
        )
        console.setLevel(logging.INFO)
        log_file = None
    for handler in handlers:
        root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return log_file


def bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "nt":  # otherwise Windows lets a second process bind the same port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    else:  # rebind right after a restart, while old connections linger in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def raise_open_files_limit() -> int:
    """Every connection is a file descriptor: allow as many as the system lets this user."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
    wanted = min(wanted, 1 << 16)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def run_serve(args: argparse.Namespace) -> int:
    from ..client import Client, ClientError

    os.umask(0o077)  # uploads, results, logs and records: the user's only, from the moment they exist
    host: str = args.host
    token = None
    if args.tls_cert or args.tls_key:
        missing = [str(p) for p in (args.tls_cert, args.tls_key) if p is None or not Path(p).is_file()]
        if missing or not (args.tls_cert and args.tls_key):
            print(
                "error: --tls-cert and --tls-key go together and must name existing PEM files"
                + (f" (not found: {', '.join(missing)})" if missing else "")
                + ".",
                file=sys.stderr,
            )
            return 1
    if args.require_token and is_loopback(host):
        token = read_token(args.token_file)
        if token is None:
            print(
                "error: --require-token needs a token, and there is none in "
                f"{args.token_file or token_path()}. "
                "Create one with `python -m backend token`.",
                file=sys.stderr,
            )
            return 1
    if not is_loopback(host):
        token = read_token(args.token_file)
        if token is None:
            where = args.token_file or token_path()
            print(
                f"error: binding {host} makes the server reachable from other machines, so it needs an "
                f"access token, and there is none in {where}. Create one with `python -m backend token` "
                "(then give it to the clients) and start again.",
                file=sys.stderr,
            )
            return 1
    try:
        sock = bind(host, args.port)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1), errno.EACCES):
            print(f"error: cannot listen on {host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        url = ServerConfig(host=probe_host, port=args.port, tls_cert=args.tls_cert).url
        try:
            health = Client(url, token=token, timeout=5, cafile=args.tls_cert).health()
        except ClientError:
            print(
                f"error: port {args.port} on {host} is used by another program; choose another --port.",
                file=sys.stderr,
            )
            return 1
        print(
            f"A GIMP Diffusion Upscale server is already running at {url} (version {health.version}, "
            f"{health.device})."
        )
        return EXIT_ALREADY_RUNNING
    port = sock.getsockname()[1]
    proof_keys = [token.encode()] if token else []
    secret_file = args.secret_file or default_secret_file()
    try:
        proof_keys.append(load_or_create_secret(secret_file))
    except OSError as exc:
        print(
            f"warning: cannot create the secret {secret_file} ({exc.strerror or exc}); clients on this "
            "machine cannot check that this server is theirs, and refuse to use it.",
            file=sys.stderr,
        )
    open_files = raise_open_files_limit()
    config = ServerConfig(
        host=host,
        port=port,
        models_dir=args.models,
        data_dir=args.data,
        token=token,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        queue_size=args.queue_size,
        max_megapixels=args.max_megapixels,
        max_output_megapixels=args.max_output_megapixels,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        abandon_after=args.abandon_after,
        result_ttl=args.keep_results,
        fetched_ttl=min(15 * 60.0, args.keep_results),
        max_image_bytes=int(args.max_image_mb * 1e6),
        max_aspect_ratio=args.max_aspect_ratio,
        allowed_hosts=tuple(args.allow_host or ()),
        proof_keys=tuple(proof_keys),
        header_timeout=args.header_timeout,
        max_connections=max(16, min(args.max_connections, open_files - 64)),
        max_client_connections=args.max_client_connections,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    log_file = setup_logging(port, args.verbose)
    data = config.resolved_data_dir()
    try:
        private_folder(data)
    except OSError as exc:
        print(f"warning: cannot create the data folder {data}: {exc.strerror or exc}", file=sys.stderr)
    from .jobs import low_disk_warning  # here: it imports the engine (torch), which `token` needs not

    warning = low_disk_warning(data)
    if warning:
        print(f"warning: {warning} The server starts anyway.", file=sys.stderr, flush=True)
        log.warning("%s", warning)
    log.info(
        "starting on %s (models %s, data %s)",
        config.url,
        config.resolved_models_dir(),
        config.resolved_data_dir(),
    )
    return _run_uvicorn(config, sock, log_file, args.verbose)


def _run_uvicorn(config: ServerConfig, sock: socket.socket, log_file: Path | None, verbose: bool) -> int:
    import uvicorn

    from .app import create_app
    from .connections import guarded_protocol

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening now: clients may connect as soon as they read this line
                print(f"Serving on {config.url} (log: {log_file or 'console only'})", flush=True)

    app = create_app(config, log_file=log_file)
    server: AnnouncingServer = AnnouncingServer(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=verbose,
            timeout_keep_alive=30,
            # Not uvicorn's limit_concurrency: it counts idle sockets too (see connections.py).
            http=guarded_protocol(
                config.header_timeout, config.max_connections, config.max_client_connections
            ),
            ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        )
    )
    app.state.shutdown = lambda: setattr(server, "should_exit", True)  # POST /v1/server/shutdown
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def run_token(args: argparse.Namespace) -> int:
    token = create_token(args.token_file, replace=args.new)
    print(token)
    print(
        f"(stored in {args.token_file or token_path()}; clients send it as 'Authorization: Bearer <token>')",
        file=sys.stderr,
    )
    return 0


def add_service_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service the plug-in and the dialog talk to")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (others than loopback need a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0 picks a free one)")
    p.add_argument("--models", type=Path, help="model folder (default: the per-user one)")
    p.add_argument("--data", type=Path, help="uploads and results (default: per-user data folder)")
    p.add_argument("--token-file", type=Path, help="access token file (default: per-user config)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    p.add_argument("--dtype", default="auto", help="auto, fp16, bf16 or fp32")
    p.add_argument("--offload", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--queue-size", type=int, default=16, help="jobs that may wait (more get 429)")
    p.add_argument("--max-megapixels", type=float, default=100.0, help="largest image accepted")
    p.add_argument("--max-output-megapixels", type=float, default=400.0, help="largest result made")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest request body accepted")
    p.add_argument(
        "--abandon-after", type=float, default=10.0, help="seconds without a poll before a job is canceled"
    )
    p.add_argument(
        "--keep-results",
        type=float,
        default=24 * 3600.0,
        help="seconds a finished job's result is kept (a quarter hour once fetched, if sooner)",
    )
    p.add_argument(
        "--max-image-mb", type=float, default=800.0, help="largest decoded image per upload, in MB"
    )
    p.add_argument(
        "--max-aspect-ratio", type=float, default=64.0, help="longest side / shortest side a job may have"
    )
    p.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="another host name clients may reach this server by (repeatable; loopback names always work)",
    )
    p.add_argument(
        "--require-token",
        action="store_true",
        help="require the token on loopback too (shared machines)",
    )
    p.add_argument(
        "--secret-file", type=Path, help="per-user secret clients check (default: per-user config)"
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: serve https (for remote use)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send its request headers",
    )
    p.add_argument("--max-connections", type=int, default=1000, help="open connections (idle ones are shed)")
    p.add_argument(
        "--max-client-connections", type=int, default=64, help="open connections per remote address"
    )
    p.add_argument("--verbose", action="store_true", help="log everything to the console too")
    p.set_defaults(func=run_serve)

    p = sub.add_parser("token", help="print the access token for serving beyond this machine (made once)")
    p.add_argument("--new", action="store_true", help="replace the token with a new one")
    p.add_argument("--token-file", type=Path, help="token file (default: per-user config)")
    p.set_defaults(func=run_token)
