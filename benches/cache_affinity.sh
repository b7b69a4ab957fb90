#!/usr/bin/env bash
# Cache affinity with real caches: what each balancing policy does to the hit ratio
# of a fleet of Varnish caches in front of one slow origin (issue 15, item 4).
#
# Set-up, all on 127.0.0.1:
#   origin   a small Python asyncio HTTP/1.1 server: every request it answers is
#            counted (GET /__count reads the counter) and waits ORIGIN_DELAY_MS before
#            answering OBJ_BYTES bytes with Cache-Control: public, max-age=86400.
#   caches   N Varnish instances (Debian's varnish; varnishd -b origin,
#            -s malloc,CACHE_MB each, its own -n working dir). CACHE_MB is a few % of
#            the bytes of all OBJECTS objects, so every cache must evict.
#   proxy    one of the policies below, one worker/thread, in front of the N caches.
#   client   wrk (1 thread, CONNS keep-alive connections) replaying a URI list: REQS
#            paths drawn from Zipf(s) over OBJECTS objects, ranks scrambled by a
#            fixed permutation (python3, seeded: every policy replays the same list).
#
# Policies, each run on fresh caches (varnishadm stop + start: a new child process,
# empty malloc storage) for N in NS and s in ZIPF:
#   rr          nginx upstream, default round robin (keepalive pool)
#   ring        ringlb, hash.key: path, no bound
#   bl-1.1 ...  ringlb with hash.balance_factor 1.1, 1.25, 1.5, 2.0
#   haproxy     HAProxy: balance uri + hash-type consistent + hash-balance-factor 125
#
# Per run: hit ratio = 1 - origin requests / requests the caches received (Varnish
# MAIN.client_req summed), per-cache max/mean request share, spill fraction (ringlb's
# ringlb_spilled_requests_total{owner=""...} / requests; HAProxy counts none), p50 and
# p99 latency seen by wrk, the proxy's CPU (utime + stime from /proc) per request.
#
# Churn (ringlb ring and balance_factor 1.25, N = CHURN_N, s = 1.0): wrk runs for
# 3 x CHURN_PHASE seconds; after the first phase one cache is removed from lb.yaml
# (POST /reload), after the second it is put back. Keys moved come from `ringlb diff`;
# the origin counter and ringlb_requests_total are sampled every second for a
# per-second hit ratio: dip = the phase's worst second below the baseline (mean of the
# 5 s before the event), recovery = seconds until two seconds in a row are back within
# 2 points of the level the phase ends at (mean of its last 5 s).
#
# Not run by CI. Needs root for apt-get when a tool is missing. Every process it
# starts is stopped by pid on exit.
#
#   benches/cache_affinity.sh                       # the full matrix, ~9 min on 2 cores
#   NS="4" ZIPF="1.0" REQS=50000 benches/cache_affinity.sh    # a quick look
#   CHURN=0 ...                                     # skip the churn runs
set -euo pipefail
cd "$(dirname "$0")/.."

NS=${NS:-"4 8"}
ZIPF=${ZIPF:-"0.8 1.0 1.2"}
POLICIES=${POLICIES:-"rr ring bl-1.1 bl-1.25 bl-1.5 bl-2.0 haproxy"}
REQS=${REQS:-100000}
OBJECTS=${OBJECTS:-100000}
OBJ_BYTES=${OBJ_BYTES:-4096}
CACHE_MB=${CACHE_MB:-8} # per cache: 2% of 100,000 x 4 KiB
CONNS=${CONNS:-32}
ORIGIN_DELAY_MS=${ORIGIN_DELAY_MS:-2}
CHURN=${CHURN:-1}
CHURN_N=${CHURN_N:-4}
CHURN_PHASE=${CHURN_PHASE:-20}
TARGET=${CARGO_TARGET_DIR:-target}
RINGLB_BIN=$TARGET/release/ringlb

WORK=$(mktemp -d /tmp/ringlb-cache.XXXXXX)
chmod 755 "$WORK" # varnishd's child runs as its own user and must reach -n dirs
PIDS=()
VARNISH_DIRS=()
CACHE_PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need varnishd || missing+=(varnish)
need nginx || missing+=(nginx)
need haproxy || missing+=(haproxy)
need wrk || missing+=(wrk)
need python3 || missing+=(python3)
need curl || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "building ringlb (release)" >&2
cargo build --release --quiet --bin ringlb

ORIGIN=19300 PROXY=19380 ADMIN=19390
VPORT0=19200 # cache i listens on VPORT0 + i

# --- origin ----------------------------------------------------------------------
cat >"$WORK/origin.py" <<'EOF'
import asyncio, sys
port, delay, size = int(sys.argv[1]), float(sys.argv[2]) / 1000, int(sys.argv[3])
count = 0
ok = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
      b"Cache-Control: public, max-age=86400\r\nContent-Length: %d\r\n\r\n" % size) + b"x" * size

async def handle(r, w):
    global count
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/__count":
                c = b"%d" % count
                w.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s" % (len(c), c))
            else:
                count += 1
                await asyncio.sleep(delay)
                w.write(ok)
            await w.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError):
        pass
    finally:
        w.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
EOF
python3 "$WORK/origin.py" $ORIGIN "$ORIGIN_DELAY_MS" "$OBJ_BYTES" &
PIDS+=($!)
origin_count() { curl -sf "http://127.0.0.1:$ORIGIN/__count"; }

# --- workloads: one URI list per s, the same for every policy and N -------------------
cat >"$WORK/zipf.py" <<'EOF'
import random, sys
s, objects, n, out = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(15)
perm = list(range(objects))
rng.shuffle(perm)  # rank r is object perm[r]: popularity unrelated to the name
cum, t = [], 0.0
for r in range(1, objects + 1):
    t += 1.0 / r ** s
    cum.append(t)
ranks = rng.choices(range(objects), cum_weights=cum, k=n)
with open(out, "w") as f:
    f.write("".join("/obj/%d\n" % perm[r] for r in ranks))
EOF
cat >"$WORK/replay.lua" <<'EOF'
-- Replays the URI list in order over all connections (one wrk thread: one Lua state).
-- With a limit, stops the thread after that many responses and creates the file
-- args[3]; the script then ends wrk with SIGINT (wrk's main thread would otherwise
-- sleep out the whole -d duration).
local paths, i, done, limit, marker = {}, 0, 0, 0, nil
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  limit = tonumber(args[2]) or 0
  marker = args[3]
end
function request()
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format("GET", paths[i])
end
if os.getenv("REPLAY_LIMIT") ~= "0" then
  function response(status, headers, body)
    done = done + 1
    if limit > 0 and done == limit then
      io.open(marker, "w"):close()
      wrk.thread:stop()
    end
  end
end
EOF
for s in $ZIPF; do
  python3 "$WORK/zipf.py" "$s" "$OBJECTS" "$REQS" "$WORK/zipf-$s.txt"
done
distinct() { sort -u "$1" | wc -l; }

# --- varnish -----------------------------------------------------------------------
start_caches() { # N
  local n=$1 i dir
  for i in $(seq 1 "$n"); do
    dir=$WORK/varnish-$i
    mkdir -p "$dir"
    varnishd -F -a "127.0.0.1:$((VPORT0 + i))" -b "127.0.0.1:$ORIGIN" \
      -s "malloc,${CACHE_MB}M" -n "$dir" -l 16M \
      -p thread_pools=1 -p thread_pool_min=20 -p thread_pool_max=500 \
      >"$WORK/varnish-$i.log" 2>&1 &
    PIDS+=($!)
    CACHE_PIDS+=($!)
    VARNISH_DIRS+=("$dir")
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$((VPORT0 + i))/__count" && break
      sleep 0.2
    done
  done
}
fresh_caches() { # empties every cache: a new child process has empty malloc storage
  local dir
  for dir in "${VARNISH_DIRS[@]}"; do
    varnishadm -n "$dir" stop >/dev/null
    varnishadm -n "$dir" start >/dev/null
  done
  for i in $(seq 1 "${#VARNISH_DIRS[@]}"); do
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$((VPORT0 + i))/__count" && break
      sleep 0.1
    done
  done
}
stop_caches() { # the managers run with -F as our children; their cache children follow
  local pid
  for pid in "${CACHE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CACHE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CACHE_PIDS=()
  VARNISH_DIRS=()
}
client_reqs() { # prints MAIN.client_req of each cache, one per line
  local dir
  for dir in "${VARNISH_DIRS[@]}"; do
    varnishstat -n "$dir" -1 -f MAIN.client_req | awk '{print $2}'
  done
}

# --- proxies -------------------------------------------------------------------------
ringlb_yaml() { # N FACTOR(or "") [SKIP_INDEX]
  local n=$1 f=$2 skip=${3:-0} i
  echo "listeners:"
  echo "  - bind: \"127.0.0.1:$PROXY\""
  echo "admin:"
  echo "  bind: \"127.0.0.1:$ADMIN\""
  echo "workers: 1"
  echo "access_log: false"
  echo "hash:"
  echo "  key: path"
  [ -n "$f" ] && echo "  balance_factor: $f"
  echo "backends:"
  for i in $(seq 1 "$n"); do
    [ "$i" = "$skip" ] && continue
    echo "  - name: cache-$i"
    echo "    address: \"127.0.0.1:$((VPORT0 + i))\""
  done
}
PROXY_PID='' CPU_PID=''
start_proxy() { # POLICY N
  local policy=$1 n=$2 i
  case $policy in
    rr)
      mkdir -p "$WORK/nginx/logs"
      {
        echo "worker_processes 1; daemon off; pid $WORK/nginx/nginx.pid;"
        echo "error_log $WORK/nginx/error.log warn;"
        echo "events { worker_connections 4096; }"
        echo "http { access_log off;"
        echo "  upstream caches {"
        for i in $(seq 1 "$n"); do echo "    server 127.0.0.1:$((VPORT0 + i));"; done
        echo "    keepalive 256; }"
        echo "  server { listen 127.0.0.1:$PROXY;"
        echo "    location / { proxy_pass http://caches; proxy_http_version 1.1;"
        echo "      proxy_set_header Connection \"\"; } } }"
      } >"$WORK/nginx/nginx.conf"
      nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
      PROXY_PID=$!
      sleep 0.5
      CPU_PID=$(pgrep -P "$PROXY_PID" | head -1)
      ;;
    haproxy)
      {
        echo "global"
        echo "  nbthread 1"
        echo "  maxconn 4000"
        echo "defaults"
        echo "  mode http"
        echo "  timeout connect 2s"
        echo "  timeout client 30s"
        echo "  timeout server 30s"
        echo "  http-reuse always"
        echo "frontend fe"
        echo "  bind 127.0.0.1:$PROXY"
        echo "  default_backend caches"
        echo "backend caches"
        echo "  balance uri"
        echo "  hash-type consistent"
        echo "  hash-balance-factor 125"
        for i in $(seq 1 "$n"); do echo "  server cache-$i 127.0.0.1:$((VPORT0 + i))"; done
      } >"$WORK/haproxy.cfg"
      haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
      PROXY_PID=$!
      CPU_PID=$PROXY_PID
      ;;
    ring | bl-*)
      local f=''
      [ "$policy" != ring ] && f=${policy#bl-}
      ringlb_yaml "$n" "$f" >"$WORK/lb.yaml"
      RUST_LOG=info "$RINGLB_BIN" --config "$WORK/lb.yaml" >/dev/null 2>"$WORK/ringlb.log" &
      PROXY_PID=$!
      CPU_PID=$PROXY_PID
      ;;
  esac
  PIDS+=("$PROXY_PID")
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$PROXY/__count" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$policy did not start" >&2
  return 1
}
stop_proxy() {
  kill "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=''
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# metric NAME FILTER: the sum of the series of NAME whose labels match FILTER (a regex)
metric() {
  curl -sf "http://127.0.0.1:$ADMIN/metrics" |
    awk -v n="$1" -v f="$2" '($1 == n || index($1, n "{") == 1) && $1 ~ f {s += $NF} END {printf "%d", s}'
}
to_ms() { # wrk's "1.23ms" / "512.00us" / "1.02s" -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) {sub(/us$/, "", v); printf "%.2f", v / 1000}
    else if (v ~ /ms$/) {sub(/ms$/, "", v); printf "%.2f", v}
    else if (v ~ /s$/) {sub(/s$/, "", v); printf "%.2f", v * 1000}
    else print "?" }'
}

ROWS=()
run_one() { # N S POLICY
  local n=$1 s=$2 policy=$3
  fresh_caches
  start_proxy "$policy" "$n"
  # the start-up probe above went through one cache: count from here
  local before o0 c0 t0 out
  mapfile -t before < <(client_reqs)
  o0=$(origin_count)
  c0=$(cpu_ticks "$CPU_PID")
  t0=$(date +%s.%N)
  rm -f "$WORK/done"
  wrk -t1 -c"$CONNS" -d600s --latency -s "$WORK/replay.lua" \
    "http://127.0.0.1:$PROXY/" -- "$WORK/zipf-$s.txt" "$REQS" "$WORK/done" >"$WORK/wrk.out" &
  local wrk_pid=$!
  PIDS+=($wrk_pid)
  while [ ! -e "$WORK/done" ] && kill -0 "$wrk_pid" 2>/dev/null; do sleep 0.05; done
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" || true
  out=$(cat "$WORK/wrk.out")
  local t1 c1 o1 after spilled=''
  t1=$(date +%s.%N)
  c1=$(cpu_ticks "$CPU_PID")
  o1=$(origin_count)
  case $policy in
    ring | bl-*) spilled=$(metric ringlb_spilled_requests_total 'owner=""') ;;
  esac
  stop_proxy
  # Varnish workers publish their counters in batches: let them settle before reading
  sleep 1
  mapfile -t after < <(client_reqs)
  local shares='' i seen=0 d total
  for i in "${!after[@]}"; do
    d=$((after[i] - before[i]))
    shares+="$d "
    seen=$((seen + d))
  done
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  # (the caches see a few dozen more: requests in flight when wrk stopped)
  if [ $((100 * (seen - total))) -gt "$total" ] || [ $((100 * (total - seen))) -gt "$total" ]; then
    echo "  note: wrk counted $total responses, the caches $seen requests (over 1% apart)" >&2
  fi
  local p50 p99 errs
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  [ -n "$errs" ] && echo "  $policy N=$n s=$s: $errs" >&2
  local row
  row=$(awk -v n="$n" -v s="$s" -v p="$policy" -v total="$total" -v origin=$((o1 - o0)) \
    -v shares="$shares" -v spilled="$spilled" -v cpu=$((c1 - c0)) -v tick="$TICK" \
    -v secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v p50="$p50" -v p99="$p99" 'BEGIN {
      k = split(shares, a, " "); max = 0
      for (j = 1; j <= k; j++) if (a[j] > max) max = a[j]
      mean = total / k
      sp = (spilled == "") ? "n/a" : sprintf("%.1f%%", 100 * spilled / total)
      printf "| %d | %s | %s | %.1f%% | %d | %.2f | %s | %s | %s | %.1f | %.0f |", n, s, p,
        100 * (1 - origin / total), origin, max / mean, sp, p50, p99,
        cpu / tick * 1e6 / total, total / secs
    }')
  echo "$row" >&2
  ROWS+=("$row")
}

START=$(date +%s)
echo "workload: $REQS requests per run, Zipf over $OBJECTS objects of $OBJ_BYTES B," \
  "${CACHE_MB} MB malloc per cache, $CONNS connections" >&2
for s in $ZIPF; do
  echo "  s=$s: $(distinct "$WORK/zipf-$s.txt") distinct objects in the list" >&2
done
for n in $NS; do
  start_caches "$n"
  for s in $ZIPF; do
    for policy in $POLICIES; do run_one "$n" "$s" "$policy"; done
  done
  stop_caches
done

# --- churn -----------------------------------------------------------------------------
CHURN_ROWS=()
# ringlb_requests_total summed over its series, counting on across reloads: a removed
# backend's series disappears, and comes back from zero when the backend is re-added
declare -A PREV
RUN_TOTAL=0
sample_total() {
  local k v p
  while read -r k v; do
    p=${PREV[$k]:-0}
    if [ "$v" -ge "$p" ]; then RUN_TOTAL=$((RUN_TOTAL + v - p)); else RUN_TOTAL=$((RUN_TOTAL + v)); fi
    PREV[$k]=$v
  done < <(curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '$1 ~ /^ringlb_requests_total[{]/ {print $1, $2}')
}
churn_one() { # FACTOR(or "")
  local f=$1 n=$CHURN_N name=ring
  [ -n "$f" ] && name="bl-$f"
  fresh_caches
  start_proxy "$name" "$n"
  ringlb_yaml "$n" "$f" "$n" >"$WORK/lb-minus.yaml"
  cp "$WORK/lb.yaml" "$WORK/lb-full.yaml"
  local moved
  moved=$("$RINGLB_BIN" diff "$WORK/lb-full.yaml" "$WORK/lb-minus.yaml" | awk 'NR == 1 {print $2}')
  REPLAY_LIMIT=0 wrk -t1 -c"$CONNS" -d$((3 * CHURN_PHASE))s -s "$WORK/replay.lua" \
    "http://127.0.0.1:$PROXY/" -- "$WORK/zipf-churn.txt" 0 >/dev/null &
  local wrk_pid=$! t
  PIDS+=($wrk_pid)
  : >"$WORK/churn-$name.tsv"
  PREV=()
  RUN_TOTAL=0
  sample_total
  local start
  start=$(date +%s.%N)
  for t in $(seq 1 $((3 * CHURN_PHASE))); do
    # sleep to the next whole second since the start
    sleep "$(awk -v s="$start" -v t="$t" -v now="$(date +%s.%N)" 'BEGIN {d = s + t - now; print (d > 0 ? d : 0)}')"
    sample_total
    echo "$t $(origin_count) $RUN_TOTAL" >>"$WORK/churn-$name.tsv"
    if [ "$t" = "$CHURN_PHASE" ]; then
      cp "$WORK/lb-minus.yaml" "$WORK/lb.yaml.new" && mv "$WORK/lb.yaml.new" "$WORK/lb.yaml"
      curl -sf -X POST "http://127.0.0.1:$ADMIN/reload" >/dev/null || echo "reload failed" >&2
    elif [ "$t" = $((2 * CHURN_PHASE)) ]; then
      cp "$WORK/lb-full.yaml" "$WORK/lb.yaml.new" && mv "$WORK/lb.yaml.new" "$WORK/lb.yaml"
      curl -sf -X POST "http://127.0.0.1:$ADMIN/reload" >/dev/null || echo "reload failed" >&2
    fi
  done
  wait "$wrk_pid" 2>/dev/null || true
  grep -o 'reload [0-9]*: .*' "$WORK/ringlb.log" | sed 's/^/  ringlb: /' >&2 || true
  stop_proxy
  local row
  row=$(awk -v p="$name" -v ph="$CHURN_PHASE" -v moved="$moved" '
    { t[NR] = $1; o[NR] = $2; r[NR] = $3 }
    END {
      for (i = 2; i <= NR; i++) h[i] = (r[i] > r[i-1]) ? 1 - (o[i] - o[i-1]) / (r[i] - r[i-1]) : 0
      # phase k covers seconds (k-1)*ph+1 .. k*ph; the event happens at the end of second k*ph
      for (k = 1; k <= 2; k++) {
        e = k * ph; base = 0
        for (i = e - 4; i <= e; i++) base += h[i]
        base /= 5
        end_ = (k + 1) * ph; lvl = 0
        for (i = end_ - 4; i <= end_; i++) lvl += h[i]
        lvl /= 5
        lo = 1
        for (i = e + 1; i <= end_; i++) if (h[i] < lo) lo = h[i]
        rec = -1
        for (i = e + 1; i < end_; i++) if (h[i] >= lvl - 0.02 && h[i+1] >= lvl - 0.02) { rec = i - e; break }
        out[k] = sprintf("%.1f%% (%+.1f) | %s | %.1f%%", 100 * lo, 100 * (lo - base),
          rec < 0 ? "> " ph " s" : rec " s", 100 * lvl)
        if (k == 1) first = sprintf("%.1f%%", 100 * base)
      }
      printf "| %s | %s | %s | %s | %s |", p, moved, first, out[1], out[2]
    }' "$WORK/churn-$name.tsv")
  echo "$row" >&2
  CHURN_ROWS+=("$row")
}
if [ "$CHURN" = 1 ]; then
  # a list long enough for three phases at a few thousand requests a second
  python3 "$WORK/zipf.py" 1.0 "$OBJECTS" $((3 * CHURN_PHASE * 8000)) "$WORK/zipf-churn.txt"
  start_caches "$CHURN_N"
  churn_one ''
  churn_one 1.25
fi

# --- report ------------------------------------------------------------------------------
echo
echo "| N | s | policy | hit ratio | origin req | cache max/mean | spilled | p50 ms | p99 ms | proxy CPU µs/req | req/s |"
echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for r in "${ROWS[@]}"; do echo "$r"; done
if [ "$CHURN" = 1 ]; then
  echo
  echo "Churn: N = $CHURN_N, s = 1.0; one cache removed after ${CHURN_PHASE} s (POST /reload), put back after $((2 * CHURN_PHASE)) s."
  echo
  echo "| policy | keys moved | before removal | worst second after removal | recovery | level without it | worst second after re-adding | recovery | level after |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${CHURN_ROWS[@]}"; do echo "$r"; done
fi
echo
echo "run time: $(($(date +%s) - START)) s (matrix and churn; excluding the build)"
