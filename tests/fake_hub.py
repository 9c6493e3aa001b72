"""A minimal Hugging Face hub on 127.0.0.1, serving local folders as model repos.

It answers the calls ``huggingface_hub.snapshot_download`` makes (repo info, file tree, HEAD and
GET of ``resolve`` URLs), so the real download code runs end to end without the internet.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                hub.requests.append(f"{self.command} {unquote(self.path)}")

            def do_GET(self) -> None:
                hub._handle(self, body=True)

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo: str) -> list[Path]:
        root = self.repos[repo]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _handle(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        for repo, root in self.repos.items():
            if path.startswith(f"/api/models/{repo}/tree/"):
                items = [
                    {
                        "type": "file",
                        "path": p.relative_to(root).as_posix(),
                        "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                    }
                    for p in self._files(repo)
                ]
                return self._send(req, json.dumps(items).encode(), "application/json", body)
            if path.startswith(f"/api/models/{repo}/revision/"):
                info = {
                    "id": repo,
                    "sha": COMMIT,
                    "siblings": [{"rfilename": p.relative_to(root).as_posix()} for p in self._files(repo)],
                }
                return self._send(req, json.dumps(info).encode(), "application/json", body)
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                _revision, _, name = path[len(prefix) :].partition("/")
                file = root / name
                if file.is_file():
                    return self._send(req, file.read_bytes(), "application/octet-stream", body)
        req.send_response(404)
        req.send_header("Content-Length", "0")
        req.end_headers()

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, data: bytes, kind: str, body: bool) -> None:
        req.send_response(200)
        req.send_header("Content-Type", kind)
        req.send_header("Content-Length", str(len(data)))
        req.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        req.send_header("X-Repo-Commit", COMMIT)
        req.end_headers()
        if body:
            req.wfile.write(data)
