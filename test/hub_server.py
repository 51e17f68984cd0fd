"""A Hugging Face Hub stand-in on 127.0.0.1 for the download tests (no internet).

It speaks the part of the Hub's protocol that ``huggingface_hub`` uses to fetch one file:
HEAD and GET on ``/{repo_id}/resolve/{revision}/{filename}`` answer with ``X-Repo-Commit``,
``ETag`` / ``X-Linked-Etag`` (the SHA-256 of an LFS file), ``X-Linked-Size`` and
``Content-Length``; GET honours ``Range: bytes=N-`` with 206 / ``Content-Range``; unknown
repositories and files get 404 with the Hub's ``X-Error-Code`` (RepoNotFound,
EntryNotFound). Faults for the tests: ``cut_after`` closes the connection after that many
body bytes of the next GET; ``fail_after_cut`` then answers 503 until cleared;
``corrupt`` serves bytes that differ from the published SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>[^?]+)")
_RANGE = re.compile(r"^bytes=(\d+)-$")


class FakeHub:
    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id = repo_id
        self.files = dict(files)
        self.cut_after: int | None = None
        self.fail_after_cut = False
        self.failing = False
        self.corrupt = False
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.authorization: list[str | None] = []  # Authorization header of each file request
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def gets(self) -> list[tuple[str, str | None]]:
        """File downloads so far: (path, Range header). (The client's other, best-effort
        requests, e.g. for its telemetry registry under /api/, are left out.)"""
        with self._lock:
            return [(path, rng) for method, path, rng in self.requests if method == "GET" and "/resolve/" in path]

    def _serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        with self._lock:
            self.requests.append((handler.command, handler.path, handler.headers.get("Range")))
        match = _RESOLVE.match(handler.path)
        if match is not None:
            with self._lock:
                self.authorization.append(handler.headers.get("Authorization"))
        if match is None or match["repo"] != self.repo_id:
            return self._error(handler, 404, "RepoNotFound")
        data = self.files.get(match["filename"])
        if data is None:
            return self._error(handler, 404, "EntryNotFound")
        if body and self.failing:
            return self._error(handler, 503, None)
        sha256 = hashlib.sha256(data).hexdigest()
        if self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status = 0, 200
        ranged = _RANGE.match(handler.headers.get("Range") or "")
        if body and ranged:
            start, status = int(ranged[1]), 206
        handler.send_response(status)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{sha256}"')
        handler.send_header("X-Linked-Etag", f'"{sha256}"')
        handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if not body:
            return
        payload = data[start:]
        with self._lock:
            cut, self.cut_after = self.cut_after, None
            if cut is not None and self.fail_after_cut:
                self.failing = True
        if cut is not None:
            handler.wfile.write(payload[:cut])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the peer sees the body end early
            return
        handler.wfile.write(payload)

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str | None) -> None:
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


def closed_port_endpoint() -> str:
    """An endpoint on 127.0.0.1 where connections are refused (a Hub that is not there)."""
    with socket.socket() as s:  # bound, never listening
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
