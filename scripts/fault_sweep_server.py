"""A misbehaving download server on 127.0.0.1 for the fault sweep's D9 cases."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# -- a misbehaving download server on 127.0.0.1 (D9) ----------------------------------------------
BOOK = ("Title: A Test\n\n*** START OF THE PROJECT GUTENBERG EBOOK A TEST ***\n"
        + "It was a dark and stormy night; the rain fell in torrents.\n" * 200
        + "*** END OF THE PROJECT GUTENBERG EBOOK A TEST ***\n").encode()
PAGE = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>No such book.</body></html>\n"


class _Handler(BaseHTTPRequestHandler):
    """The first path segment says how to misbehave: html, htmlastext, cut, short, drip."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        how = self.path.split("/")[1]
        body = PAGE if how.startswith("html") else BOOK
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if how == "html" else "text/plain; charset=utf-8")
        if how != "cut":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if how == "drip":
                for byte in body[:40]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                self.wfile.write(body[: len(body) // 2] if how in ("cut", "short") else body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def serve() -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
