#!/usr/bin/env python3
"""A real HTTP/1.1 backend for tests/http.rs (Python's http.server, keep-alive), on
127.0.0.1 and a free port, which it prints on its first line. Runs until killed.

  GET  /size/N[?chunked]  N bytes (pattern), with Content-Length or chunked
  POST /echo              "LEN SHA256" of the request body (Content-Length or chunked)
  GET  /whoami            the --name it was started with
  GET  /slow              answers after 3 s
  GET  with Upgrade       403 with its name as the body (it speaks no WebSocket)
"""

import argparse
import hashlib
import http.server
import socketserver
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, chunked=False):
        self.send_response(status)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 8192):
                part = body[i:i + 8192]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Upgrade"):
            return self.send(403, NAME.encode())
        path, _, query = self.path.partition("?")
        if path.startswith("/size/"):
            n = int(path[6:])
            body = bytes((i * 7) % 256 for i in range(min(n, 65536)))
            body = (body * (n // 65536 + 1))[:n]
            return self.send(200, body, chunked=query == "chunked")
        if path == "/whoami":
            return self.send(200, NAME.encode())
        if path == "/slow":
            time.sleep(3)
            return self.send(200, b"late")
        self.send(404, b"no such path")

    do_HEAD = do_GET

    def do_POST(self):
        h = hashlib.sha256()
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                h.update(data)
                n += len(data)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    break
                h.update(data)
                n += len(data)
                left -= len(data)
        self.send(200, ("%d %s" % (n, h.hexdigest())).encode())


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="backend")
    NAME = p.parse_args().name
    s = Server(("127.0.0.1", 0), Handler)
    print(s.server_address[1], flush=True)
    s.serve_forever()
