#!/usr/bin/env python3
"""The baseline of deploy/bench/transfer.sh: the least an HTTP server can do to move a file
over loopback. GET streams a file with sendfile(2); PUT/POST writes the body to a file in 1 MiB
reads and fsyncs it (the gateway fsyncs too). No hashing, no database.

usage: loopback_server.py PORT FILE_TO_SERVE UPLOAD_PATH
"""
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, SERVE, UPLOAD = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        size = os.path.getsize(SERVE)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with open(SERVE, "rb") as f:
            offset = 0
            while offset < size:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent

    def do_PUT(self):
        left = int(self.headers["Content-Length"])
        with open(UPLOAD, "wb") as f:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
            f.flush()
            os.fsync(f.fileno())
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
