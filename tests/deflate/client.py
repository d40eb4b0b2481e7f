#!/usr/bin/env python3
"""A compressing WebSocket client for tests/deflate.rs: Python's `websockets` offering
permessage-deflate. Prints the negotiated extensions, echoes text, binary, a 1 MiB
compressible message and a fragmented one, then closes with 4000 and expects 4000 back.
Prints one line per check; exits non-zero on the first mismatch.

    client.py --port PORT [--want-extensions permessage-deflate|none]
"""

import argparse
import asyncio
import sys

try:
    from websockets.asyncio.client import connect
except ImportError:  # websockets < 13
    try:
        from websockets import connect
    except ImportError:
        sys.exit("tests/deflate/client.py needs websockets: python3 -m pip install websockets")


def check(what, got, want):
    if got != want:
        show = lambda v: repr(v) if len(repr(v)) < 200 else f"{type(v).__name__} of {len(v)}"
        sys.exit(f"MISMATCH {what}: got {show(got)}, want {show(want)}")
    print("ok", what, flush=True)


async def main(args):
    url = f"ws://127.0.0.1:{args.port}/deflate"
    async with connect(url, compression="deflate", max_size=None, open_timeout=10, close_timeout=10) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "none")
        print("extensions", ext, flush=True)
        check("extension", ext.split(";")[0].strip(), args.want_extensions)

        text = "héllo, wörld ✓ " * 50
        await ws.send(text)
        check("text echo", await ws.recv(), text)
        binary = bytes((i * 7 + 3) % 256 for i in range(4096))
        await ws.send(binary)
        check("binary echo", await ws.recv(), binary)
        big = ("0123456789abcdef" * 65536).encode()
        await ws.send(big)
        check("1 MiB echo", await ws.recv(), big)
        parts = ["frag-%d " % i * 100 for i in range(5)]
        await ws.send(iter(parts))
        check("fragmented echo", await ws.recv(), "".join(parts))
        await ws.close(code=4000, reason="bye")
        check("close code", ws.close_code, 4000)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--want-extensions", default="permessage-deflate")
    asyncio.run(main(p.parse_args()))
