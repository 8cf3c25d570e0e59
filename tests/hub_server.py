"""A small Hugging Face Hub look-alike on 127.0.0.1, for tests of the real huggingface_hub client.

It answers ``HEAD`` and ``GET`` on ``/[spaces/|datasets/]OWNER/REPO/resolve/REVISION/PATH``
with the headers ``hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``,
``Content-Length``), the Hub's 404 error codes, ``Range`` requests for resumed
downloads, and failures a test asks for. Every request is logged so tests can
count downloads.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

FAILURES = ("500", "truncate", "drop", "hang", "slow")
"""What a file can be told to do instead of being served normally:

- ``500``: every request for it gets HTTP 500.
- ``truncate``: HEAD gives the full size; GET sends a complete response of half the bytes.
- ``drop``: GET announces the full size, sends half and closes the connection.
- ``hang``: HEAD waits (up to ``HubServer.hang_s``) before answering.
- ``slow``: GET waits ``HubServer.slow_s`` before sending, so concurrent clients overlap.
"""

REPO_PREFIXES = {"spaces": "space", "datasets": "dataset"}


def commit_of(repo_type: str, repo_id: str, revision: str) -> str:
    """A stable 40-hex commit id for a repo revision."""
    return hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode()).hexdigest()


class HubServer:
    """A threaded Hub look-alike; use as a context manager.

    Attributes:
        url: ``http://127.0.0.1:PORT``, for ``HF_ENDPOINT``.
        requests: ``(method, path)`` of every request received, in order.
    """

    def __init__(self, hang_s: float = 5.0, slow_s: float = 0.3) -> None:
        self.hang_s = hang_s
        self.slow_s = slow_s
        self.requests: list[tuple[str, str]] = []
        self._files: dict[tuple[str, str, str], dict[str, bytes]] = {}
        self._failures: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def add(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        repo_type: str = "model",
        revision: str = "main",
    ) -> None:
        """Serves ``data`` as ``filename`` in a repo at a revision (creating the repo)."""
        with self._lock:
            self._files.setdefault((repo_type, repo_id, revision), {})[filename] = data

    def fail(self, repo_id: str, filename: str, mode: str, repo_type: str = "model") -> None:
        """Makes one file misbehave in one of the ``FAILURES`` ways."""
        assert mode in FAILURES, mode
        with self._lock:
            self._failures[(repo_type, repo_id, filename)] = mode

    def count(self, method: str, fragment: str = "") -> int:
        """How many ``method`` requests had ``fragment`` in their path."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and fragment in p)

    def lookup(self, path: str) -> tuple[int, dict[str, str], bytes | None, str | None]:
        """Resolves a request path to ``(status, headers, body, failure mode)``."""
        parsed = _parse(path)
        if parsed is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, None, None
        repo_type, repo_id, revision, filename = parsed
        with self._lock:
            revisions = {
                r: f for (t, i, r), f in self._files.items() if (t, i) == (repo_type, repo_id)
            }
            mode = self._failures.get((repo_type, repo_id, filename))
        if mode == "500":
            return 500, {}, None, mode
        if not revisions:
            return 404, {"X-Error-Code": "RepoNotFound"}, None, mode
        by_commit = {commit_of(repo_type, repo_id, r): r for r in revisions}
        name = by_commit.get(revision, revision)
        if name not in revisions:
            return 404, {"X-Error-Code": "RevisionNotFound"}, None, mode
        headers = {"X-Repo-Commit": commit_of(repo_type, repo_id, name)}
        data = revisions[name].get(filename)
        if data is None:
            return 404, {**headers, "X-Error-Code": "EntryNotFound"}, None, mode
        headers["ETag"] = '"' + hashlib.sha256(data).hexdigest() + '"'
        return 200, headers, data, mode


def _parse(path: str) -> tuple[str, str, str, str] | None:
    """``/[spaces/]OWNER/REPO/resolve/REV/FILE`` -> ``(repo_type, repo_id, revision, file)``."""
    parts = path.split("?", 1)[0].lstrip("/").split("/")
    repo_type = REPO_PREFIXES.get(parts[0], "model")
    if repo_type != "model":
        parts = parts[1:]
    if len(parts) < 5 or parts[2] != "resolve":
        return None
    filename = unquote("/".join(parts[4:]))
    return repo_type, f"{parts[0]}/{parts[1]}", unquote(parts[3]), filename


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one ``HubServer``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            """Silent: the request log is ``hub.requests``."""

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            with hub._lock:
                hub.requests.append((self.command, self.path))
            status, headers, data, mode = hub.lookup(self.path)
            if mode == "hang" and not send_body:
                hub._stop.wait(hub.hang_s)
            if mode == "slow" and send_body:
                time.sleep(hub.slow_s)
            if data is None:
                self._send(status, headers, b"")
            elif not send_body:
                self._send(200, {**headers, "Content-Length": str(len(data))}, b"")
            else:
                self._send_file(headers, data, mode)

        def _send_file(self, headers: dict[str, str], data: bytes, mode: str | None) -> None:
            start = _range_start(self.headers.get("Range"))
            status = 206 if start else 200
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            announced = len(body)
            if mode in ("truncate", "drop"):
                body = body[: len(body) // 2]
            if mode == "truncate":
                announced = len(body)
            self._send(status, {**headers, "Content-Length": str(announced)}, body)
            if mode == "drop":
                self.close_connection = True

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if body:
                self.wfile.write(body)

    return Handler


def _range_start(header: str | None) -> int:
    """The first byte asked for by a ``Range: bytes=N-`` header (0 without one)."""
    if not header or not header.startswith("bytes="):
        return 0
    return int(header.removeprefix("bytes=").split("-", 1)[0] or 0)
