#!/usr/bin/env python3
"""A real wss backend for tests/tls.rs: Python's `websockets` echo server over the standard
`ssl` module, on 127.0.0.1 and a free port, which it prints on its first line. It echoes
every message (and a close code, as websockets does). Runs until killed.

    server.py --cert leaf.pem --key leaf.key [--client-ca ca.pem]

With --client-ca, clients must present a certificate from that CA.
"""

import argparse
import asyncio
import ssl
import sys

from websockets.exceptions import ConnectionClosed

try:
    from websockets.asyncio.server import serve
except ImportError:  # websockets < 13
    try:
        from websockets import serve
    except ImportError:
        sys.exit("tests/tls/server.py needs websockets: python3 -m pip install websockets")


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:  # a close code other than 1000/1001 (the test's 4000)
        pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca")
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    if a.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.client_ca)
    async with serve(echo, "127.0.0.1", 0, ssl=ctx, max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


asyncio.run(main())
