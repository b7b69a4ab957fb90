#!/usr/bin/env bash
# Instructions per request, counted by callgrind: deterministic where wall-clock CPU on a
# shared VM is not, so two builds compare exactly (BENCHMARKS.md, "User time is what is
# left"). ringlb runs under valgrind with `workers: 1` and the access log off, in front
# of three example backends; h2load sends WARM requests, then N over 2,000 paths.
#
#   benches/callgrind.sh [RINGLB_BINARY] [BACKEND_BINARY]
#   N=20000 WARM=1000 H2=1 benches/callgrind.sh     # H2=1: h2c with -m 10 instead of HTTP/1.1
#   EXTRA='hot_keys: false' benches/callgrind.sh      # YAML appended to the config
#   HASH='  balance_factor: 1.25' benches/callgrind.sh # lines added to its hash block
#
# Defaults: target/release/ringlb and target/release/examples/backend (build them with
# `cargo build --release --bin ringlb --example backend`). Needs valgrind and h2load
# (Debian: valgrind, nghttp2-client). Prints the whole-process instruction total and
# the total per measured request.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGLB=${1:-target/release/ringlb}
BACKEND=${2:-target/release/examples/backend}
N=${N:-20000}
WARM=${WARM:-1000}
H2=${H2:-0}
for tool in valgrind h2load; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=("$(free_port)" "$(free_port)" "$(free_port)")
for i in 0 1 2; do
  "$BACKEND" "app-$((i + 1))" "127.0.0.1:${B[$i]}" >/dev/null &
  PIDS+=($!)
done
PORT=$(free_port)
cat >"$WORK/lb.yaml" <<EOF
listeners:
  - bind: "127.0.0.1:$PORT"
hash:
  key: path
${HASH:-}
backends:
  - {name: app-1, address: "127.0.0.1:${B[0]}"}
  - {name: app-2, address: "127.0.0.1:${B[1]}"}
  - {name: app-3, address: "127.0.0.1:${B[2]}"}
workers: 1
access_log: false
${EXTRA:-}
EOF
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$RINGLB" --config "$WORK/lb.yaml" \
  >/dev/null 2>"$WORK/valgrind.log" &
VG=$!
PIDS+=($VG)
for _ in $(seq 1 300); do
  (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

for i in $(seq 0 1999); do echo "http://127.0.0.1:$PORT/k/$i"; done >"$WORK/uris"
if [ "$H2" = 1 ]; then
  mode=(-m 10 -c 4)
else
  mode=(--h1 -c 4)
fi
h2load "${mode[@]}" -n "$WARM" -i "$WORK/uris" >/dev/null
h2load "${mode[@]}" -n "$N" -i "$WORK/uris" | grep -E '^requests:' >&2

kill -INT "$VG"
wait "$VG" 2>/dev/null || true
total=$(grep -E '^summary:|^totals:' "$WORK/cg.out" | head -1 | awk '{print $2}')
echo "instructions: $total total, $((total / (N + WARM))) per request ($RINGLB, $([ "$H2" = 1 ] && echo h2c || echo HTTP/1.1))"
