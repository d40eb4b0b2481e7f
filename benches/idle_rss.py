#!/usr/bin/env python3
"""Idle memory per connection measured by an independent client: starts `wslb echo` and
`wslb run` from the binary given, opens N WebSocket connections from Python (sequential
connects, every upgrade in flight at once), uses each once with a 64-byte echo, and prints
the growth of VmRSS, RssAnon and RssFile per connection.

    python3 benches/idle_rss.py target/release/wslb 19200   # ports 19200 and 19201
"""
import os, resource, socket, subprocess, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
binp, port = sys.argv[1], int(sys.argv[2])
echo = subprocess.Popen([binp, "echo", "--listen", f"127.0.0.1:{port+1}", "--workers", "1"], stderr=subprocess.DEVNULL)
lb = subprocess.Popen([binp, "run", "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{port+1}", "--workers", "2", "--admin", ""], stderr=subprocess.DEVNULL)
time.sleep(1)
def st(pid):
    d = {}
    for l in open(f"/proc/{pid}/status"):
        k, _, v = l.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            d[k] = int(v.split()[0])
    return d
s0 = st(lb.pid)
req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
socks = []
N = int(os.environ.get("N", "9000"))
for i in range(N):
    s = socket.create_connection(("127.0.0.1", port))
    s.send(req)
    socks.append(s)
for s in socks:
    s.recv(200)
# each used once: a 64-byte masked text frame, echoed
frame = bytes([0x81, 0x80 | 64, 1, 2, 3, 4]) + bytes(64)
for s in socks:
    s.send(frame)
for s in socks:
    got = b""
    while len(got) < 66:
        got += s.recv(100)
time.sleep(2)
s1 = st(lb.pid)
print(binp, {k: round((s1[k] - s0[k]) * 1024 / N) for k in s0}, "B/conn", s1)
lb.kill(); echo.kill()
