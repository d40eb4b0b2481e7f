#!/usr/bin/env bash
# Autobahn|Testsuite fuzzingclient against `wslb echo` directly and through wslb, over ws
# and over wss (wslb terminating TLS with a throwaway certificate), in one run. Fails if any
# case fails through wslb that does not fail directly, or if the echo backend itself fails
# a case. Needs openssl (for the certificate).
#
#   autobahn/run.sh            quick: cases 1-10 against wslb's echo, and the compression
#                              cases 12.1, 12.2, 13.1, 13.3 against a compressing Python
#                              websockets echo (tests/deflate/server.py), each directly
#                              and through wslb; ~4 min
#   autobahn/run.sh --full     every case (12.* and 13.* in full)
#   WSLB_IO_DRIVER=epoll autobahn/run.sh   the same through wslb on its epoll driver
#   AUTOBAHN_CASES='["12.*","13.*"]' autobahn/run.sh   only these cases (a JSON list)
#
# Needs Python 2.7 (autobahntestsuite is Python 2 only); set PYTHON2 or have pyenv's
# 2.7.18. The virtualenv goes to autobahn/.venv and is reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
mode=quick
[ "${1:-}" = "--full" ] && mode=full

py2=${PYTHON2:-}
if [ -z "$py2" ]; then
  for c in "$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python2" "$HOME/.pyenv/versions/2.7.18/bin/python2" python2.7 python2; do
    if command -v "$c" >/dev/null 2>&1; then py2=$c; break; fi
  done
fi
[ -n "$py2" ] || { echo "autobahn: no Python 2.7 found (set PYTHON2)" >&2; exit 1; }

venv=$here/.venv
if [ ! -x "$venv/bin/wstest" ]; then
  echo "autobahn: creating $venv with $py2"
  "$py2" -m pip install -q "virtualenv<20.22" 2>&1 | grep -v DEPRECATION || true
  "$py2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q autobahntestsuite 2>&1 | grep -v DEPRECATION || true
fi

(cd "$root" && cargo build --release -q)
bin=$root/target/release/wslb

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_port=$(free_port); lb_port=$(free_port); wss_port=$(free_port)
deflate_port=$(free_port); lb_deflate_port=$(free_port)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin" echo --listen "127.0.0.1:$echo_port" --workers 1 2>"$work/echo.log" & pids+=($!)
"$bin" run --listen "127.0.0.1:$lb_port" --backend "127.0.0.1:$echo_port" --workers 2 \
  --io-driver "${WSLB_IO_DRIVER:-auto}" --admin "" 2>"$work/lb.log" & pids+=($!)
# The same through TLS: a throwaway self-signed certificate (Autobahn's client does not
# verify it), wslb terminating wss:// in front of the same echo backend.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
"$bin" run --listen "127.0.0.1:$wss_port" --backend "127.0.0.1:$echo_port" --workers 2 \
  --io-driver "${WSLB_IO_DRIVER:-auto}" --admin "" \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" 2>"$work/lb-wss.log" & pids+=($!)
# permessage-deflate end to end: a compressing backend (Python websockets), directly and
# through wslb (extensions = "pass", the default).
python3 "$root/tests/deflate/server.py" --port "$deflate_port" >"$work/deflate.log" 2>&1 & pids+=($!)
"$bin" run --listen "127.0.0.1:$lb_deflate_port" --backend "127.0.0.1:$deflate_port" --workers 2 \
  --io-driver "${WSLB_IO_DRIVER:-auto}" --admin "" 2>"$work/lb-deflate.log" & pids+=($!)
for port in "$echo_port" "$lb_port" "$wss_port" "$deflate_port" "$lb_deflate_port"; do
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
    sleep 0.1
  done
done

if [ -n "${AUTOBAHN_CASES:-}" ]; then
  cases=$AUTOBAHN_CASES
elif [ "$mode" = quick ]; then
  cases='["1.*","2.*","3.*","4.*","5.*","6.*","7.*","8.*","9.*","10.*","12.1.*","12.2.*","13.1.*","13.3.*"]'
else
  cases='["*"]'
fi
# wslb's echo does not compress (12.*, 13.* would be UNIMPLEMENTED on every agent); the
# compressing backend is there for 12.* and 13.* only.
plain_only='["12.*","13.*"]'
deflate_only='["1.*","2.*","3.*","4.*","5.*","6.*","7.*","8.*","9.*","10.*"]'

reports=$here/reports
rm -rf "$reports"; mkdir -p "$reports"
cat >"$work/fuzzingclient.json" <<JSON
{
  "outdir": "$reports",
  "servers": [
    {"agent": "direct", "url": "ws://127.0.0.1:$echo_port"},
    {"agent": "wslb", "url": "ws://127.0.0.1:$lb_port"},
    {"agent": "wslb-wss", "url": "wss://127.0.0.1:$wss_port"},
    {"agent": "direct-deflate", "url": "ws://127.0.0.1:$deflate_port"},
    {"agent": "wslb-deflate", "url": "ws://127.0.0.1:$lb_deflate_port"}
  ],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {
    "direct": $plain_only, "wslb": $plain_only, "wslb-wss": $plain_only,
    "direct-deflate": $deflate_only, "wslb-deflate": $deflate_only
  }
}
JSON
echo "autobahn: $mode run, echo on :$echo_port, wslb on :$lb_port (ws) and :$wss_port (wss); compressing echo on :$deflate_port, wslb on :$lb_deflate_port"
(cd "$work" && timeout 3000 "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >"$work/wstest.log" 2>&1) || {
  tail -30 "$work/wstest.log"; echo "autobahn: wstest failed" >&2; exit 1; }
python3 "$here/compare.py" "$reports/index.json"
