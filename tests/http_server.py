"""A local HTTP server for tests: serves a directory on 127.0.0.1 (an ephemeral port) with HEAD and Range support
(what fsspec's http backend asks for), and misbehaves per path on request: stall, answer a status, hang up.

    with HttpServer(root) as server:
        server.behave("stuck.mp4", "stall")      # no answer at all, until the server stops
        server.behave("slow.mp4", "stall-body")  # headers and the first bytes, then nothing
        server.behave("gone.mp4", "hangup")      # headers, half the body, then the connection closes
        server.behave("secret.mp4", 403)         # any status code, with a short body
        url = server.url("clip.mp4")

Behaviours apply to every request (HEAD included, except "stall-body" and "hangup", whose HEAD answers normally so
a client gets as far as reading). `hits[path]` counts the requests per path. Stopping wakes every stalled request and
closes every connection, then joins every handler thread: no thread outlives `stop()`.
"""

from __future__ import annotations

import email.utils
import http.server
import mimetypes
import socket
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

BEHAVIOURS = ("normal", "stall", "stall-body", "hangup")  # or an int: the status to answer
HANDLER_TIMEOUT = 30.0  # seconds an idle keep-alive connection is kept (stop() closes them at once anyway)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects
    timeout = HANDLER_TIMEOUT
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # quiet: pytest shows stderr of failing tests only anyway
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        owner = self.server.owner
        with self.server.lock:
            owner.hits[rel] += 1
            behaviour = owner.behaviours.get(rel, "normal")
        if behaviour == "stall":
            self.server.stopping.wait()
            self.close_connection = True
            return
        if isinstance(behaviour, int):
            message = f"{behaviour} {self.responses.get(behaviour, ('',))[0]}\n".encode()
            self.send_response(behaviour)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            if body:
                self.wfile.write(message)
            return
        file = (owner.root / rel).resolve()
        if owner.root not in file.parents or not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start, end, status = 0, len(data), 200
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes="):].partition("-")
            start = int(first) if first else max(0, len(data) - int(last))
            end = min(len(data), int(last) + 1) if first and last else len(data)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", mimetypes.guess_type(rel)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(file.stat().st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        chunk = data[start:end]
        if behaviour == "normal":
            self.wfile.write(chunk)
            return
        self.wfile.write(chunk[: max(1, len(chunk) // 2)] if behaviour == "hangup" else chunk[:1])
        self.wfile.flush()
        if behaviour == "stall-body":
            self.server.stopping.wait()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close joins every handler thread
    block_on_close = True

    def __init__(self, owner: "HttpServer"):
        self.owner = owner
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)


class HttpServer:
    """Serves `root` at `base` (http://127.0.0.1:PORT) from start() (or `with`) until stop()."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.behaviours: dict[str, str | int] = {}
        self.hits: Counter = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        assert self._server is not None, "the server is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, rel: str) -> str:
        """The URL of `rel` (a path under root; its query, if any, is passed as it is)."""
        return f"{self.base}/{rel.lstrip('/')}"

    def behave(self, rel: str, behaviour: str | int) -> None:
        """How requests for `rel` are answered from now on: one of BEHAVIOURS, or an HTTP status code."""
        if not isinstance(behaviour, int) and behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS} or a status code, got {behaviour!r}")
        with self._lock():
            self.behaviours[rel.lstrip("/")] = behaviour

    def start(self) -> "HttpServer":
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="lfqtok-test-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake stalled requests, close every connection, stop serving and join every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        with server.lock:
            connections = list(server.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # joins the handler threads
        self._thread.join()

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _lock(self):
        return self._server.lock if self._server is not None else threading.Lock()
