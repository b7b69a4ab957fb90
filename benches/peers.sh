#!/usr/bin/env bash
# ringlb next to nginx and HAProxy, measured in the same run on this machine.
#
# Each proxy hashes the request URI consistently over the same three backends with
# one worker pinned to core 0; the backends and the load generator share core 1.
# Workloads, interleaved for ROUNDS rounds: HTTP/1.1 keep-alive with 64 and with 1
# connection (wrk, 100,000 distinct URIs) and h2c with 64 connections x 10 streams
# (h2load, prior knowledge). Prints one markdown table: req/s, p50/p99, proxy CPU
# microseconds per request (from /proc; what separates proxies once the load core
# saturates) split into user and kernel time, peak RSS, and each proxy's ratio to
# nginx in the same round.
#
# Not run by CI. Needs root for apt-get when a tool is missing. Every server listens
# on 127.0.0.1 and is stopped by pid at the end.
#
#   benches/peers.sh                 # ROUNDS=3 SECS=8 by default
#   ROUNDS=2 SECS=5 benches/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
WORK=$(mktemp -d /tmp/ringlb-peers.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need nginx || missing+=(nginx)
need haproxy || missing+=(haproxy)
need wrk || missing+=(wrk)
need h2load || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "building ringlb and the example backend (release)" >&2
cargo build --release --quiet --bin ringlb --example backend

B=(19001 19002 19003)
for i in 0 1 2; do
  taskset -c 1 target/release/examples/backend "app-$((i + 1))" "127.0.0.1:${B[$i]}" >/dev/null &
  PIDS+=($!)
done

# --- configs -------------------------------------------------------------------
NGINX_H1=18081 NGINX_H2=18091 HAPROXY_H1=18082 HAPROXY_H2=18092 RINGLB=18083
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app {
    hash \$request_uri consistent;
    server 127.0.0.1:${B[0]}; server 127.0.0.1:${B[1]}; server 127.0.0.1:${B[2]};
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$NGINX_H1;
    listen 127.0.0.1:$NGINX_H2 http2;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_H1
  bind 127.0.0.1:$HAPROXY_H2 proto h2
  default_backend be
backend be
  balance uri
  hash-type consistent
  server app-1 127.0.0.1:${B[0]}
  server app-2 127.0.0.1:${B[1]}
  server app-3 127.0.0.1:${B[2]}
EOF
cat >"$WORK/lb.yaml" <<EOF
listeners:
  - bind: "127.0.0.1:$RINGLB"
workers: 1
access_log: false
hash:
  key: uri
backends:
  - name: app-1
    address: "127.0.0.1:${B[0]}"
  - name: app-2
    address: "127.0.0.1:${B[1]}"
  - name: app-3
    address: "127.0.0.1:${B[2]}"
EOF

# --- start the proxies on core 0 ----------------------------------------------------
taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db &
PIDS+=($!)
RUST_LOG=warn taskset -c 0 target/release/ringlb --config "$WORK/lb.yaml" >/dev/null 2>&1 &
PIDS+=($!)
RINGLB_PID=$!
sleep 1
HAPROXY_PID=$(pgrep -n -f "haproxy -f $WORK/haproxy.cfg")
NGINX_PID=$(pgrep -n -f "nginx: worker process" || true)
[ -n "$NGINX_PID" ] || { echo "nginx did not start: $(cat "$WORK/nginx/error.log")" >&2; exit 1; }

for i in $(seq 1 2000); do echo "/k/$i"; done >"$WORK/paths.txt"
for port in $NGINX_H2 $HAPROXY_H2 $RINGLB; do
  sed "s#^#http://127.0.0.1:$port#" "$WORK/paths.txt" >"$WORK/uris-$port.txt"
done

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # user and system ticks
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
TICK=$(getconf CLK_TCK)

# run NAME PID KIND PORT -> "req/s p50 p99 cpu_us_per_req user_us sys_us"
run() {
  local pid=$2 kind=$3 port=$4 out u0 s0 u1 s1 reqs rps p50 p99
  read -r u0 s0 < <(cpu_ticks "$pid")
  case $kind in
    h1x64 | h1x1)
      local c=64
      [ "$kind" = h1x1 ] && c=1
      out=$(taskset -c 1 wrk -t1 -c$c -d${SECS}s --latency -s benches/paths.lua "http://127.0.0.1:$port/")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      ;;
    h2c)
      out=$(taskset -c 1 h2load -c64 -m10 -D "$SECS" -i "$WORK/uris-$port.txt" 2>&1)
      reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
      rps=$(awk '/^finished in/ {print $4}' <<<"$out")
      # h2load reports min, max, mean, sd of request time; mean stands in for p50.
      p50=$(awk '/time for request:/ {print $6}' <<<"$out")
      p99=$(awk '/time for request:/ {print $5}' <<<"$out")"(max)"
      ;;
  esac
  read -r u1 s1 < <(cpu_ticks "$pid")
  awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v t="$TICK" -v r="$reqs" -v rest="$rps $p50 $p99" \
    'BEGIN { if (r > 0) printf "%s %.1f %.1f %.1f\n", rest, (u + s) / t * 1e6 / r, u / t * 1e6 / r, s / t * 1e6 / r; else print rest, "- - -" }'
}

declare -A NGINX_RPS NGINX_CPU
printf '| round | workload | proxy | req/s | p50 | p99 | CPU µs/req | user + sys | peak RSS | req/s vs nginx | CPU vs nginx |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for round in $(seq 1 "$ROUNDS"); do
  for kind in h1x64 h1x1 h2c; do
    for proxy in nginx haproxy ringlb; do
      case $proxy in
        nginx) pid=$NGINX_PID h1=$NGINX_H1 h2=$NGINX_H2 ;;
        haproxy) pid=$HAPROXY_PID h1=$HAPROXY_H1 h2=$HAPROXY_H2 ;;
        ringlb) pid=$RINGLB_PID h1=$RINGLB h2=$RINGLB ;;
      esac
      port=$h1
      [ "$kind" = h2c ] && port=$h2
      read -r rps p50 p99 cpu user sys < <(run "$proxy" "$pid" "$kind" "$port")
      rss=$(( $(hwm_kib "$pid") / 1024 ))
      if [ "$proxy" = nginx ]; then
        NGINX_RPS[$kind]=$rps
        NGINX_CPU[$kind]=$cpu
      fi
      ratio_rps=$(awk -v a="$rps" -v b="${NGINX_RPS[$kind]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      ratio_cpu=$(awk -v a="$cpu" -v b="${NGINX_CPU[$kind]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      printf '| %s | %s | %s | %s | %s | %s | %s | %s + %s | %s MiB | %s | %s |\n' \
        "$round" "$kind" "$proxy" "$rps" "$p50" "$p99" "$cpu" "$user" "$sys" "$rss" "$ratio_rps" "$ratio_cpu"
    done
  done
done
