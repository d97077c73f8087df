"""A loopback CDN: one file, every connection throttled, every answer one round trip late.

Real CDNs cap each connection (the Hub's users report 40-60 MB/s per connection) and sit a round trip
away; this is what segmented downloads are measured against (benchmarks/transfer.py)::

    with CdnServer(path, per_connection=25e6, rtt=0.030) as cdn:
        url = cdn.url()                      # http://127.0.0.1:PORT/<file name>
        ...
        cdn.sent                             # body bytes sent so far, all connections together
        cdn.ranges                           # the Range header of every GET (None for a whole file)
        # GET /stats answers {"sent": ..., "gets": ...} for a client in another process

It answers HEAD and GET with ``Range: bytes=a-b`` / ``a-`` (206 + ``Content-Range``), ``If-Range``
(strong ETag or the Last-Modified date; a mismatch sends the whole file), a strong ETag and
Last-Modified; the body goes out with ``sendfile(2)`` in slices paced to ``per_connection`` bytes/s.
Run as a process: ``python tests/emulators/cdn.py FILE BYTES_PER_S RTT_S`` prints its port, then serves.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

SLICES_PER_SECOND = 100  # pacing granularity of each connection


class CdnServer:
    """Serves ``path`` at ``/<name>``; a context manager that starts and stops it."""

    def __init__(self, path: Path, per_connection: Optional[float] = 25e6, rtt: float = 0.030,
                 etag: Optional[str] = None):
        self.path, self.per_connection, self.rtt = Path(path), per_connection, rtt
        self.size = self.path.stat().st_size
        identity = str((self.path, self.size, self.path.stat().st_mtime)).encode()
        self.etag = etag or f'"{hashlib.sha256(identity).hexdigest()[:32]}"'
        self.last_modified = formatdate(self.path.stat().st_mtime, usegmt=True)
        self.sent, self.ranges = 0, []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads, self._httpd.owner = True, self
        self._httpd.request_queue_size = 64

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.path.name}"

    def span(self, range_header: Optional[str], if_range: Optional[str]) -> tuple[int, int, int]:
        """(first byte, end exclusive, status) for a request's Range and If-Range."""
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", (range_header or "").strip())
        if not match or (if_range is not None and if_range not in (self.etag, self.last_modified)):
            return 0, self.size, 200
        first, last = int(match.group(1)), match.group(2)
        end = min(self.size, int(last) + 1) if last else self.size
        return (first, end, 206) if first < end else (0, 0, 416)

    def count(self, sent: int) -> None:
        with self._lock:
            self.sent += sent

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.05)

    def __enter__(self) -> "CdnServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        cdn: CdnServer = self.server.owner
        if self.path == "/stats":  # for a client in another process: body bytes sent, and GETs seen
            body = json.dumps({"sent": cdn.sent, "gets": len(cdn.ranges)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.split("?")[0] != f"/{cdn.path.name}":
            self.send_error(404)
            return
        time.sleep(cdn.rtt)  # the request's way there and the answer's way back
        first, end, status = cdn.span(self.headers.get("Range"), self.headers.get("If-Range"))
        if self.command == "GET":
            with cdn._lock:
                cdn.ranges.append(self.headers.get("Range"))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", cdn.etag)
        self.send_header("Last-Modified", cdn.last_modified)
        if status == 416:
            self.send_header("Content-Range", f"bytes */{cdn.size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{end - 1}/{cdn.size}")
        self.send_header("Content-Length", str(end - first))
        self.end_headers()
        if self.command == "GET":
            self._send_paced(cdn, first, end)

    do_HEAD = do_GET

    def _send_paced(self, cdn: CdnServer, first: int, end: int) -> None:
        """sendfile(2) in slices, each connection never ahead of ``per_connection`` bytes/s."""
        rate = cdn.per_connection
        piece = int(rate / SLICES_PER_SECOND) if rate else 8 * 2**20
        began, at = time.monotonic(), first
        try:
            with open(cdn.path, "rb") as file:
                while at < end:
                    sent = os.sendfile(self.connection.fileno(), file.fileno(), at, min(piece, end - at))
                    if sent == 0:
                        break
                    at += sent
                    cdn.count(sent)
                    ahead = (at - first) / rate - (time.monotonic() - began) if rate else 0
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            self.close_connection = True  # the client hung up (a segment finished elsewhere, a kill)

    def handle(self):
        try:
            super().handle()
        except ConnectionError:
            pass  # the client went away: a stolen tail, a kill

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    server = CdnServer(Path(sys.argv[1]), float(sys.argv[2]) or None, float(sys.argv[3]))
    print(server.port, flush=True)
    server.serve_forever()
