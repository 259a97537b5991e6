"""A local HTTP server for the network tests: real sockets on 127.0.0.1, hostile answers made to order.

    with serve({"/cat.png": reply(b"...", "image/png")}) as server:
        fetch_url(server.url + "/cat.png")
        server.requests      # [(method, path, headers)] of every request it saw

A route is a function of the request handler (http.server.BaseHTTPRequestHandler): it writes the
whole answer itself, so it can also drip, stall, cut the body short or send garbage. A route that
waits should wait on `handler.server.stop` (set when the block exits), so nothing outlives the test.
"""

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and Range, as real servers (and the Hub) speak

    def log_message(self, *args):  # quiet: pytest shows stderr of failing tests
        pass

    def _answer(self):
        path = unquote(urlsplit(self.path).path)
        self.server.requests.append((self.command, path, dict(self.headers)))
        route = self.server.route_for(path)
        if route is None:
            self.send_error(404)
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should with a hostile answer

    do_GET = do_HEAD = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes, self.requests, self.stop = routes, [], threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def route_for(self, path):
        """The route of an exact path, else of the longest prefix key ending in '*'."""
        if path in self.routes:
            return self.routes[path]
        prefixes = [key for key in self.routes if key.endswith("*") and path.startswith(key[:-1])]
        return self.routes[max(prefixes, key=len)] if prefixes else None


@contextmanager
def serve(routes):
    """Serve `routes` ({path: route}) at a free port of 127.0.0.1; yield the server (.url, .requests)."""
    server = _Server(routes)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def reply(body, content_type="application/octet-stream", status=200, headers=()):
    """A route answering `body` in full, with its Content-Length (no body for HEAD)."""
    def route(handler):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
    return route
