#!/usr/bin/env bash
# Profiles wslb under the load bench and renders a flamegraph (SVG) of the proxy process.
#
#   flamegraphs/profile.sh [--size 64|16384] [--wss] [--secs 8] [--label NAME] [--proxy-bin PATH]
#   flamegraphs/profile.sh --scenario latency [--label NAME] [--proxy-bin PATH]
#
# Runs `cargo bench --bench load` (closed loop, 100 connections, the given message size)
# against wslb, records the wslb process with `perf record -g` for the whole run, and folds
# and renders the stacks with inferno. Output: flamegraphs/<label>-<size>.svg and a text
# summary of the hottest functions, flamegraphs/<label>-<size>.top.txt. --wss: the same over
# wss (wslb terminating TLS; the bench's wss-tput scenarios), label `wss` unless given.
# --scenario runs any other load-bench scenario instead (e.g. `latency`, the paced 100
# connections x 100 msg/s); output flamegraphs/<label>-<scenario>.svg.
#
# The build uses frame pointers (RUSTFLAGS=-Cforce-frame-pointers=yes, in its own target
# directory) so user-space stacks unwind without DWARF; kernel stacks need nothing.
# --proxy-bin profiles another wslb build (e.g. an older commit) under the same load.
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno); installs them if
# missing and it can. Loopback only, bounded by --secs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
size=64 secs=8 label= proxy_bin= wss= scenario=
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    --wss) wss=wss-; shift ;;
    --scenario) scenario=$2; shift 2 ;;
    --proxy-bin) proxy_bin=$(realpath "$2"); shift 2 ;;
    *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$scenario" ]; then
  tag=$scenario
else
  case $size in 64) scenario=${wss}tput-100x64 ;; 16384) scenario=${wss}tput-100x16k ;;
    *) echo "profile.sh: --size is 64 or 16384" >&2; exit 2 ;; esac
  tag=$size
fi
[ -n "$label" ] || label=${wss:+wss}; [ -n "$label" ] || label=current

command -v perf >/dev/null || { echo "installing linux-perf"; apt-get install -y -q linux-perf >/dev/null; }
command -v inferno-flamegraph >/dev/null || { echo "installing inferno"; cargo install -q inferno; }
export PATH=$HOME/.cargo/bin:$PATH

export CARGO_TARGET_DIR=$root/target/profile
export RUSTFLAGS="-Cforce-frame-pointers=yes"
(cd "$root" && cargo build -q --release --bench load)
[ -n "$proxy_bin" ] && export WSLB_BENCH_PROXY_BIN=$proxy_bin

work=$(mktemp -d)
trap 'kill $bench 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$root" && cargo bench -q --bench load -- --scenarios "$scenario" --targets direct,wslb \
  --rounds 1 --secs "$secs" >"$work/bench.txt" 2>&1) &
bench=$!
# The proxy is the `wslb run` the bench starts; record it for the whole run (it is idle
# while the bench measures the direct target, so that adds no samples).
pid=
for _ in $(seq 300); do
  # (For wss the bench starts a TLS-terminating wslb next to the plain one: that one.)
  pid=$(pgrep -f "wslb run .*--listen 127.0.0.1${wss:+.*--tls-cert}" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { cat "$work/bench.txt"; echo "profile.sh: wslb did not start" >&2; exit 1; }
perf record -F 997 -g -p "$pid" -o "$work/perf.data" 2>"$work/perf.log" &
perf_pid=$!
wait "$bench" || { cat "$work/bench.txt"; exit 1; }
kill -INT "$perf_pid" 2>/dev/null || true
wait "$perf_pid" 2>/dev/null || true

out=$here/$label-$tag
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$work/folded"
case $tag in
  64|16384) title="wslb, ${wss:+wss }closed loop 100 conns x $size B ($label)" ;;
  *) title="wslb, load-bench scenario $scenario ($label)" ;;
esac
inferno-flamegraph --title "$title" --width 1400 <"$work/folded" >"$out.svg"
{
  echo "$title"
  grep -E "^\| (direct|wslb) " "$work/bench.txt" || true
  echo
  echo "samples by top-of-stack function (self time), hottest first:"
  awk '{n=$NF; $NF=""; k=split($0,f,";"); sub(/ +$/,"",f[k]); s[f[k]]+=n; t+=n}
       END {for (x in s) printf "%6.2f%%  %s\n", 100*s[x]/t, x}' "$work/folded" | sort -rn | head -25
  echo
  echo "user space vs kernel (by whether the stack reaches a kernel frame):"
  awk '{n=$NF; t+=n; if ($0 ~ /_\[k\]/) k+=n} END {printf "kernel %.1f%%, user %.1f%%\n", 100*k/t, 100*(t-k)/t}' "$work/folded"
} >"$out.top.txt"
echo "wrote $out.svg and $out.top.txt"
cat "$out.top.txt" | head -12
