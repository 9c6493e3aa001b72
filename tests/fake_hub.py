"""A minimal Hugging Face hub on 127.0.0.1, serving local folders as model repos.

It answers the calls ``huggingface_hub`` makes to list and fetch (repo info, the file tree of the
repository or of one folder, recursive or not, with folders as the hub lists them, HEAD and GET of
``resolve`` URLs), so the real download code runs end to end without the internet. Every request is
recorded in ``requests``; ``fetched`` lists the repository files whose contents were sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

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

    def fetched(self, repo: str | None = None) -> list[str]:
        """Repository paths (``repo/path``) whose contents were sent by a GET of a resolve URL."""
        found = []
        for line in self.requests:
            method, _, url = line.partition(" ")
            name, sep, rest = urlsplit(url).path.lstrip("/").partition("/resolve/")
            if method == "GET" and sep and (repo is None or name == repo):
                found.append(f"{name}/{rest.partition('/')[2]}")
        return found

    def _tree(self, repo: str, folder: str, recursive: bool) -> list[dict[str, object]] | None:
        """The hub's tree listing of ``folder`` ("" for the root): files and folders, None if absent."""
        root = self.repos[repo]
        base = root / folder if folder else root
        if not base.is_dir():
            return None
        entries = sorted(base.rglob("*") if recursive else base.iterdir())
        items: list[dict[str, object]] = []
        for p in entries:
            rel = p.relative_to(root).as_posix()
            if p.is_dir():
                oid = hashlib.sha1(rel.encode()).hexdigest()
                items.append({"type": "directory", "path": rel, "size": 0, "oid": oid})
            else:
                data = p.read_bytes()
                items.append(
                    {"type": "file", "path": rel, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                )
        return items

    def _handle(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(req.path)
        path = unquote(url.path)
        for repo, root in self.repos.items():
            tree = f"/api/models/{repo}/tree/"
            if path.startswith(tree):
                _revision, _, folder = path[len(tree) :].partition("/")
                recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                items = self._tree(repo, folder.strip("/"), recursive)
                if items is not None:
                    return self._send(req, json.dumps(items).encode(), "application/json", body)
                break
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
