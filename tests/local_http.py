"""A JSON-over-HTTP server on a free loopback port in a thread, for tests of clients of Google's
HTTP APIs (signing keys, Secret Manager) that cannot be reached from here.

    class Keys(LocalHttp):
        def respond(self, path):           # -> (status, JSON body, extra headers)
            return 200, {"keys": []}, {}

    with Keys() as server:
        urllib.request.urlopen(server.base + "/jwks")
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHttp:
    """Subclasses give ``respond(path)``; ``None`` answers 404."""

    def __init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                answered = outer.respond(self.path)
                if answered is None:
                    self.send_error(404)
                    return
                status, body, headers = answered
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def respond(self, path: str) -> tuple[int, object, dict] | None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
