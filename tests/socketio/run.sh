#!/usr/bin/env bash
# Socket.IO behind the real wslb binary (socketio.mjs): three socket.io backends, 100
# socket.io-client clients with the default transports (polling, then the upgrade), with
# cookie affinity and, to show what it prevents, without. Needs node 20+ with npm, cargo.
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
for tool in node npm cargo; do
    command -v "$tool" >/dev/null || { echo "tests/socketio: needs $tool on PATH" >&2; exit 1; }
done
npm ci --no-audit --no-fund --loglevel=error
(cd "$repo" && cargo build --quiet --bin wslb)
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
export WSLB="$target/debug/wslb"
node socketio.mjs
