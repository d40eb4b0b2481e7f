#!/usr/bin/env bash
# The status page in a real browser (status-page.mjs): Debian's Chromium, headless, driven
# from Node by playwright-core, against examples/admin_demo. Saves its screenshot under
# target/ (SCREENSHOT=docs/status-page.png refreshes the README's picture on purpose).
# Then wss:// from the same browser through the real binary (wss.mjs), trusting a test CA
# through an NSS database.
# Needs node 20+ with npm, cargo, Chromium at $CHROMIUM (default /usr/bin/chromium), the
# openssl CLI and certutil (Debian: libnss3-tools).
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
    echo "tests/browser: no Chromium at $CHROMIUM." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y chromium   (or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
fi
for tool in node npm cargo openssl; do
    command -v "$tool" >/dev/null || { echo "tests/browser: needs $tool on PATH" >&2; exit 1; }
done
if ! command -v certutil >/dev/null; then
    echo "tests/browser: wss.mjs needs certutil (NSS tools)." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y libnss3-tools" >&2
    exit 1
fi

# playwright-core only: it downloads no browser.
npm ci --no-audit --no-fund --loglevel=error
(cd "$repo" && cargo build --quiet --example admin_demo --bin wslb)
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
export ADMIN_DEMO="$target/debug/examples/admin_demo"
export WSLB="$target/debug/wslb"
mkdir -p "$repo/target/browser"
export SCREENSHOT="${SCREENSHOT:-$repo/target/browser/status-page.png}"
# The page's states (draining, backends down, unreachable) against a scripted instance,
# then the real binary with real traffic from the browser's own WebSockets, then wss://.
node status-page.mjs
node real-traffic.mjs
node wss.mjs
