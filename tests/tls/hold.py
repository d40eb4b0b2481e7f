"""Holds N wss connections open for tests/memory.rs: each upgrades, echoes one binary
message of SIZE bytes (checked), then idles. Prints "ready" once all are up, and exits
when stdin closes. Standard library only; verification off (the test measures the
server's heap, not the client's trust).

    python3 hold.py HOST PORT N SIZE
"""
import asyncio, os, ssl, struct, sys


async def one(host, port, size, ctx):
    r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
    w.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = os.urandom(size)
    mask = b"\x01\x02\x03\x04"
    if size < 126:
        h = struct.pack("!BB", 0x82, 0x80 | size)
    elif size < 65536:
        h = struct.pack("!BBH", 0x82, 0x80 | 126, size)
    else:
        h = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
    w.write(h + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    b0, b1 = await r.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await r.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await r.readexactly(8))
    assert b0 == 0x82 and n == size, (b0, n)
    assert await r.readexactly(n) == payload
    return w


async def main():
    host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    held = []
    for i in range(0, n, 50):
        held += await asyncio.gather(*(one(host, port, size, ctx) for _ in range(min(50, n - i))))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()


asyncio.run(main())
