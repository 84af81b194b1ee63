"""Real HTTP servers on loopback that misbehave on purpose (drip, flood, redirect, refuse), for
tests of the clients that must survive them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Behave = Callable[[BaseHTTPRequestHandler], None]


def handler(behave: Behave) -> type[BaseHTTPRequestHandler]:
    """A request handler that reads the request body, then lets `behave` answer GET and POST."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            behave(self)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            behave(self)

        def log_message(self, *_: object) -> None:
            pass

    return Handler


@contextmanager
def serving(behave: Behave, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """A threaded server answering with `behave`; yields its base URL."""
    httpd = ThreadingHTTPServer((host, port), handler(behave))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
