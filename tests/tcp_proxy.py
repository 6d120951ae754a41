"""A TCP forwarder to a local server for tests (moto's S3 server): every byte passed on both ways, with hooks a test
overrides to hold back a request (a stalled object) or to cut the network mid-run.

    class Stalling(TcpProxy):
        def passes(self, data, up):
            return not (up and data.startswith(b"GET /bucket/key"))

    proxy = Stalling(s3_server)       # point the client at proxy.endpoint
    proxy.close()                     # every connection dropped, every thread joined
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards each connection to `upstream` ('http://127.0.0.1:PORT') on 127.0.0.1, an ephemeral port."""

    def __init__(self, upstream: str):
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def accepting(self) -> bool:
        """Whether a new connection is taken (refused at once otherwise)."""
        return True

    def passes(self, data: bytes, up: bool) -> bool:
        """Whether `data` (up: from the client) is passed on; False holds this direction for good (the other side
        waits for an answer that never comes)."""
        return True

    def passed(self, data: bytes, up: bool) -> None:
        """Called after `data` was passed on."""

    def drop(self) -> None:
        """Every connection dropped."""
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.drop()
        for thread in self.threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.accepting():
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b, up in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(a, b, up), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, a: socket.socket, b: socket.socket, up: bool) -> None:
        try:
            while data := a.recv(65536):
                if not self.passes(data, up):
                    return
                b.sendall(data)
                self.passed(data, up)
        except OSError:
            pass
        for sock in (a, b):
            sock.close()
