#!/usr/bin/env python3
"""A compressing WebSocket echo backend for tests/deflate.rs and Autobahn: Python's
`websockets` with permessage-deflate on (its default), on 127.0.0.1 and a free port (or
--port), which it prints on its first line. Echoes every message. Runs until killed.

    server.py [--port N] [--no-compression]
"""

import argparse
import asyncio
import sys

from websockets.exceptions import ConnectionClosed

try:
    from websockets.asyncio.server import serve
except ImportError:  # websockets < 13
    try:
        from websockets import serve
    except ImportError:
        sys.exit("tests/deflate/server.py needs websockets: python3 -m pip install websockets")


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--no-compression", action="store_true")
    a = p.parse_args()
    compression = None if a.no_compression else "deflate"
    async with serve(echo, "127.0.0.1", a.port, compression=compression, max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
