#!/usr/bin/env python3
"""A real wss client for tests/tls.rs: Python's `websockets` over the standard `ssl` module,
trusting only the test CA and checking the server name. Echoes text, binary and a 1 MiB
message through wslb, then closes with 4000 and expects 4000 back. Prints one line per
check; exits non-zero on the first mismatch (or any error).

    client.py --port PORT --ca ca.pem [--server-name localhost]

It connects to 127.0.0.1 (the balancer listens there only) and verifies the certificate
for --server-name (sent as SNI too).
"""

import argparse
import asyncio
import ssl
import sys

try:
    from websockets.asyncio.client import connect
except ImportError:  # websockets < 13
    try:
        from websockets import connect
    except ImportError:
        sys.exit("tests/tls/client.py needs websockets: python3 -m pip install websockets")


def check(what, got, want):
    if got != want:
        show = lambda v: repr(v) if len(repr(v)) < 200 else f"{type(v).__name__} of {len(v)}"
        sys.exit(f"MISMATCH {what}: got {show(got)}, want {show(want)}")
    print("ok", what, flush=True)


async def main(args):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    url = f"wss://127.0.0.1:{args.port}/python"
    # No compression: wslb strips permessage-deflate anyway; asking for it would only make
    # the check of what the server accepted noisier.
    async with connect(
        url,
        ssl=ctx,
        server_hostname=args.server_name,
        compression=None,
        max_size=None,
        open_timeout=10,
        close_timeout=10,
    ) as ws:
        tls = ws.transport.get_extra_info("ssl_object")
        print("tls", tls.version(), tls.cipher()[0], flush=True)
        check("ALPN", tls.selected_alpn_protocol(), "http/1.1")

        text = "héllo, wörld ✓ " * 50
        await ws.send(text)
        check("text echo", await ws.recv(), text)

        binary = bytes((i * 7 + 3) % 256 for i in range(4096))
        await ws.send(binary)
        check("binary echo", await ws.recv(), binary)

        big = bytes((i * 13 + 5) % 256 for i in range(1 << 20))
        await ws.send(big)
        check("1 MiB binary echo", await ws.recv(), big)

        empty = b""
        await ws.send(empty)
        check("empty binary echo", await ws.recv(), empty)

        await ws.close(code=4000, reason="python done")
        rcvd = getattr(ws, "close_rcvd", None) or getattr(getattr(ws, "protocol", None), "close_rcvd", None)
        check("close code echoed", rcvd.code if rcvd else ws.close_code, 4000)
        check("close reason echoed", rcvd.reason if rcvd else ws.close_reason, "python done")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--server-name", default="localhost")
    try:
        asyncio.run(asyncio.wait_for(main(p.parse_args()), 60))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - any failure is a test failure, with its cause
        sys.exit(f"FAILED: {type(e).__name__}: {e}")
