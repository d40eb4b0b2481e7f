#!/usr/bin/env bash
# The status page in a real browser (status-page.mjs): Debian's Chromium, headless, driven
# from Node by playwright-core, against examples/admin_demo. Saves docs/status-page.png.
# Needs node 20+ with npm, cargo, and Chromium at $CHROMIUM (default /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
    echo "tests/browser: no Chromium at $CHROMIUM." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y chromium   (or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
fi
for tool in node npm cargo; do
    command -v "$tool" >/dev/null || { echo "tests/browser: needs $tool on PATH" >&2; exit 1; }
done

# playwright-core only: it downloads no browser.
npm ci --no-audit --no-fund --loglevel=error
(cd "$repo" && cargo build --quiet --example admin_demo --bin wslb)
export ADMIN_DEMO="$repo/target/debug/examples/admin_demo"
export WSLB="$repo/target/debug/wslb"
export SCREENSHOT="${SCREENSHOT:-$repo/docs/status-page.png}"
# The page's states (draining, backends down, unreachable) against a scripted instance,
# then the real binary with real traffic from the browser's own WebSockets.
node status-page.mjs
node real-traffic.mjs
