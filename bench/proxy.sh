#!/usr/bin/env bash
# The egress proxy side by side with squid and with no proxy ("direct"), in one run on
# loopback, against one nginx upstream. Every server is started here on free ports and
# stopped on exit. Measures, ROUNDS times each, interleaved, and prints medians:
#   1. added latency of a small GET at concurrency 1      (target: warden <= 1/2 squid's)
#   2. requests/s of small GETs over 64 keep-alive clients (target: warden >= 2x squid)
#   3. a 1 GiB download through a CONNECT tunnel           (target: warden >= 0.9x direct)
#      - over TLS (https://, what HTTPS_PROXY clients tunnel): the target's figure;
#      - and plain HTTP inside the tunnel, which Warden reads as HTTP so that
#        [[network.http]] rules and the credential guard apply to every request
#   4. RSS of the proxy holding 10,000 idle CONNECT tunnels (warden and squid)
# The CONNECT transfer also goes through bench/relay.c, the floor: a minimal C relay
# (blocking threads, 256 KiB copies, no policy at all), the most any proxy that carries
# the bytes through its own memory can do on this machine; and, as root, through
# bench/sockmap_relay.c, which hands the tunnel to the kernel (a BPF sockmap redirect:
# the bytes never reach user space).
# plus, to explain 1 and 2, "fresh": direct with `Connection: close`, i.e. a new TCP
# connection to nginx per request, which is what a proxy without an upstream
# keep-alive pool pays on its upstream side.
#
#   bash bench/proxy.sh [ROUNDS] [SECONDS]      (default 3 rounds of 5 s runs)
#
# Load tool: wrk (Debian `wrk`). wrk has no proxy option; proxy.lua makes it send
# absolute-form requests (`GET http://upstream/ HTTP/1.1`, Host: upstream) to the
# proxy's address, which is exactly what a client configured with HTTP_PROXY sends.
# The 1 GiB transfer is curl --proxytunnel (CONNECT, then plain HTTP inside the
# tunnel); idle tunnels are held by bench/tunnels.py. Squid runs with caching off
# (`cache deny all`) and logging off, so both proxies forward every request.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
TUNNELS=${TUNNELS:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
for pair in squid:squid nginx:nginx wrk:wrk curl:curl; do
  need "${pair%%:*}" || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench: install ${missing[*]} (Debian packages) first" >&2; exit 1
  fi
  apt-get update -qq >/dev/null 2>&1 || true
  # RUNLEVEL=1: the packages' services are not started; this script starts its own.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
need python3 || { echo "bench: python3 is needed for bench/tunnels.py" >&2; exit 1; }
need cc || { echo "bench: a C compiler (cc) is needed for bench/relay.c" >&2; exit 1; }

cargo build --release -q -p warden --manifest-path "$ROOT/Cargo.toml"
WARDEN=$CARGO_TARGET_DIR/release/warden

# 10,000 tunnels need ~20,000 descriptors in the proxy (client and upstream socket
# each) and 10,000 in each end. Raise the limit as far as allowed; where the hard
# limit is lower (containers), hold as many tunnels as fit and say so.
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] && HARD=1048576
ulimit -n "$(( HARD < 65536 ? HARD : 65536 ))"
FIT=$(( ($(ulimit -n) - 200) / 2 ))
if [ "$TUNNELS" -gt "$FIT" ]; then
  echo "bench: open-file limit $(ulimit -n) (hard) fits $FIT tunnels per proxy, not $TUNNELS; holding $FIT" >&2
  TUNNELS=$FIT
fi

WORK=$(mktemp -d /tmp/warden-bench-proxy.XXXXXX)
chmod 755 "$WORK" # squid's workers run as the `proxy` user
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port name pid
  local i
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { echo "bench: $2 exited at start; log:" >&2; cat "$WORK/$2.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: $2 did not listen on $1; log:" >&2; cat "$WORK/$2.log" >&2; exit 1
}

# --- upstream: nginx, one worker, a 16-byte page and a 1 GiB file -------------------
UP=$(free_port)
UPS=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" >/dev/null 2>&1
mkdir -p "$WORK/www"
printf 'hello from nginx' > "$WORK/www/small"
truncate -s 1G "$WORK/www/1g" # sparse: served from page cache, no disk reads
cat > "$WORK/nginx.conf" <<EOF
daemon off;
user root;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $WORK/nginx.pid;
error_log $WORK/nginx.log warn;
events { worker_connections 32768; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 600s;
  keepalive_requests 10000000;
  client_header_timeout 600s;
  client_body_temp_path $WORK/nginx-tmp;
  proxy_temp_path $WORK/nginx-tmp;
  fastcgi_temp_path $WORK/nginx-tmp;
  uwsgi_temp_path $WORK/nginx-tmp;
  scgi_temp_path $WORK/nginx-tmp;
  server {
    listen 127.0.0.1:$UP;
    listen 127.0.0.1:$UPS ssl;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
    root $WORK/www;
    default_type application/octet-stream;
  }
}
EOF
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.log" >"$WORK/nginx.log" 2>&1 &
PIDS+=($!); wait_port "$UP" nginx $!

# --- squid: caching and logging off ------------------------------------------------
SQUID_PORT=$(free_port)
mkdir -p "$WORK/squid"; chown proxy: "$WORK/squid" 2>/dev/null || true
cat > "$WORK/squid.conf" <<EOF
http_port 127.0.0.1:$SQUID_PORT
http_access allow localhost
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log $WORK/squid/cache.log
pid_filename $WORK/squid/squid.pid
coredump_dir $WORK/squid
cache_effective_user proxy
max_filedescriptors 65536
shutdown_lifetime 0 seconds
EOF
squid -N -f "$WORK/squid.conf" >"$WORK/squid.log" 2>&1 &
SQUID_PID=$!; PIDS+=($SQUID_PID); wait_port "$SQUID_PORT" squid $SQUID_PID

# --- warden proxy: a policy that allows the upstream ------------------------------
# Loopback is a special range: only an IP entry admits it (warden-policy README).
WARDEN_PORT=$(free_port)
cat > "$WORK/policy.toml" <<EOF
version = 1
name = "bench-proxy"
[network]
allow = ["127.0.0.1:$UP", "127.0.0.1:$UPS"]
EOF
"$WARDEN" proxy --policy "$WORK/policy.toml" --listen "127.0.0.1:$WARDEN_PORT" \
  --audit "$WORK/audit.jsonl" >"$WORK/warden.log" 2>&1 &
WARDEN_PID=$!; PIDS+=($WARDEN_PID); wait_port "$WARDEN_PORT" warden $WARDEN_PID

# --- the floor: a minimal C relay for the CONNECT transfer ---------------------------
cc -O2 -pthread -o "$WORK/relay" "$ROOT/bench/relay.c"
RELAY_PORT=$(free_port)
"$WORK/relay" "$RELAY_PORT" >"$WORK/relay.log" 2>&1 &
PIDS+=($!); wait_port "$RELAY_PORT" relay $!
KERNEL_PORT=""
if [ "$(id -u)" = 0 ]; then
  cc -O2 -o "$WORK/sockmap_relay" "$ROOT/bench/sockmap_relay.c"
  KERNEL_PORT=$(free_port)
  "$WORK/sockmap_relay" "$KERNEL_PORT" >"$WORK/kernel.log" 2>&1 &
  PIDS+=($!); wait_port "$KERNEL_PORT" kernel $!
fi

# Sanity: each path fetches the page.
for via in direct squid warden; do
  case $via in
    direct) args=() ;;
    squid) args=(-x "http://127.0.0.1:$SQUID_PORT") ;;
    warden) args=(-x "http://127.0.0.1:$WARDEN_PORT") ;;
  esac
  body=$(curl -sS --noproxy '' "${args[@]}" "http://127.0.0.1:$UP/small")
  [ "$body" = "hello from nginx" ] || { echo "bench: $via fetched '$body'" >&2; exit 1; }
done

cat > "$WORK/proxy.lua" <<'EOF'
-- Absolute-form requests to the upstream, sent to whatever address wrk connects to.
local target = os.getenv("BENCH_UPSTREAM")
wrk.path = "http://" .. target .. "/small"
wrk.headers["Host"] = target
EOF

proxy_port() { case $1 in squid) echo "$SQUID_PORT" ;; warden) echo "$WARDEN_PORT" ;; relay) echo "$RELAY_PORT" ;; kernel) echo "$KERNEL_PORT" ;; esac; }

wrk_run() { # via connections -> wrk output file
  local via=$1 conns=$2 out threads=2
  out="$WORK/wrk-$via-$conns-$RANDOM.txt"
  [ "$conns" = 1 ] && threads=1
  if [ "$via" = direct ]; then
    wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency "http://127.0.0.1:$UP/small" >"$out"
  elif [ "$via" = fresh ]; then # direct, but a new TCP connection for every request
    wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency -H 'Connection: close' \
      "http://127.0.0.1:$UP/small" >"$out"
  else
    BENCH_UPSTREAM="127.0.0.1:$UP" wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency \
      -s "$WORK/proxy.lua" "http://127.0.0.1:$(proxy_port "$via")" >"$out"
  fi
  if grep -q -E 'Non-2xx|Socket errors' "$out"; then
    echo "bench: wrk through $via reported errors:" >&2; grep -E 'Non-2xx|Socket errors' "$out" >&2
  fi
  echo "$out"
}
# p50 latency in microseconds, and requests/s, from wrk's report.
p50_us() {
  awk '/^ +50%/ { v=$2; u=v; gsub(/[0-9.]/,"",u); sub(/[a-z]+$/,"",v);
    f = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 0; printf "%.1f", v*f }' "$1"
}
rps() { awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$1"; }

transfer_mbs() { # via [tls] -> MB/s of a 1 GiB download (through a CONNECT tunnel for proxies)
  local args=() url="http://127.0.0.1:$UP/1g"
  [ "$1" != direct ] && args=(--proxytunnel -x "http://127.0.0.1:$(proxy_port "$1")")
  [ "${2:-}" = tls ] && { url="https://127.0.0.1:$UPS/1g"; args+=(--cacert "$WORK/tls.crt"); }
  curl -sS --noproxy '' "${args[@]}" -o /dev/null -w '%{size_download} %{speed_download}\n' \
    "$url" | awk '$1 != 1073741824 { print "short transfer: " $1 > "/dev/stderr"; exit 1 }
    { printf "%.0f", $2 / 1e6 }'
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END { m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.1f", m }'; }

declare -A LAT RPS MBS TLS
for via in direct fresh squid warden relay kernel; do LAT[$via]=""; RPS[$via]=""; MBS[$via]=""; TLS[$via]=""; done
# Warm-up: one short run per path (connection setup, allocator), and the 1 GiB file
# read once so that every measured transfer is served from the page cache.
for via in direct squid warden; do
  SECS=1 wrk_run "$via" 8 >/dev/null
done
transfer_mbs direct >/dev/null
transfer_mbs direct tls >/dev/null
for ((r = 1; r <= ROUNDS; r++)); do
  for via in direct fresh squid warden; do
    f=$(wrk_run "$via" 1); LAT[$via]+="$(p50_us "$f") "
    f=$(wrk_run "$via" 64); RPS[$via]+="$(rps "$f") "
    if [ "$via" != fresh ]; then
      MBS[$via]+="$(transfer_mbs "$via") "
      TLS[$via]+="$(transfer_mbs "$via" tls) "
    fi
  done
  MBS[relay]+="$(transfer_mbs relay) "
  TLS[relay]+="$(transfer_mbs relay tls) "
  if [ -n "$KERNEL_PORT" ]; then
    MBS[kernel]+="$(transfer_mbs kernel) "
    TLS[kernel]+="$(transfer_mbs kernel tls) "
  fi
  echo "round $r/$ROUNDS (direct | fresh | squid | warden): p50 us ${LAT[direct]% } | ${LAT[fresh]% } | ${LAT[squid]% } | ${LAT[warden]% };" \
    "req/s ${RPS[direct]% } | ${RPS[fresh]% } | ${RPS[squid]% } | ${RPS[warden]% };" \
    "MB/s TLS ${TLS[direct]% } | ${TLS[squid]% } | ${TLS[warden]% } | relay ${TLS[relay]% } | kernel ${TLS[kernel]% }, plain ${MBS[direct]% } | ${MBS[squid]% } | ${MBS[warden]% } | relay ${MBS[relay]% } | kernel ${MBS[kernel]% }" >&2
done

# --- idle tunnels: RSS before and while holding $TUNNELS CONNECT tunnels ---------
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
declare -A RSS0 RSS1 HELD
for via in squid warden; do
  pid=$SQUID_PID; [ "$via" = warden ] && pid=$WARDEN_PID
  RSS0[$via]=$(rss_kb "$pid")
  rm -f "$WORK/hold"; mkfifo "$WORK/hold"
  python3 "$ROOT/bench/tunnels.py" "127.0.0.1:$(proxy_port "$via")" "127.0.0.1:$UP" "$TUNNELS" \
    <"$WORK/hold" >"$WORK/tunnels-$via.out" 2>"$WORK/tunnels-$via.err" &
  TPID=$!; PIDS+=($TPID)
  exec 9>"$WORK/hold"
  for _ in $(seq 1 1200); do
    grep -q ready "$WORK/tunnels-$via.out" 2>/dev/null && break
    kill -0 "$TPID" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1
  HELD[$via]=$(awk '/^ready/ { print $2 "/" $2 + $3 }' "$WORK/tunnels-$via.out")
  RSS1[$via]=$(rss_kb "$pid")
  [ -s "$WORK/tunnels-$via.err" ] && cat "$WORK/tunnels-$via.err" >&2
  exec 9>&-
  wait "$TPID" 2>/dev/null || true
  sleep 2 # let the proxy tear the tunnels down before the next one is measured
done

# --- report -------------------------------------------------------------------------
declare -A L R M T
for via in direct fresh squid warden; do
  # shellcheck disable=SC2086
  L[$via]=$(median ${LAT[$via]}); R[$via]=$(median ${RPS[$via]})
  if [ "$via" != fresh ]; then
    # shellcheck disable=SC2086
    M[$via]=$(median ${MBS[$via]}); T[$via]=$(median ${TLS[$via]})
  fi
done
# shellcheck disable=SC2086
T[relay]=$(median ${TLS[relay]}); M[relay]=$(median ${MBS[relay]})
T[kernel]=0; M[kernel]=0
if [ -n "$KERNEL_PORT" ]; then
  # shellcheck disable=SC2086
  T[kernel]=$(median ${TLS[kernel]}); M[kernel]=$(median ${MBS[kernel]})
fi
python3 - "${L[direct]}" "${L[squid]}" "${L[warden]}" "${R[direct]}" "${R[squid]}" "${R[warden]}" \
  "${M[direct]}" "${M[squid]}" "${M[warden]}" "${RSS0[squid]}" "${RSS1[squid]}" "${HELD[squid]:-0/0}" \
  "${RSS0[warden]}" "${RSS1[warden]}" "${HELD[warden]:-0/0}" "$ROUNDS" "$SECS" \
  "${L[fresh]}" "${R[fresh]}" "${T[direct]}" "${T[squid]}" "${T[warden]}" \
  "${T[relay]}" "${M[relay]}" "${T[kernel]}" "${M[kernel]}" <<'EOF'
import sys
a = sys.argv[1:]
ld, ls, lw, rd, rs, rw, md, ms, mw = map(float, a[0:9])
s0, s1, sheld, w0, w1, wheld = int(a[9]), int(a[10]), a[11], int(a[12]), int(a[13]), a[14]
rounds, secs = a[15], a[16]
lf, rf = float(a[17]), float(a[18])
td, ts, tw = map(float, a[19:22])
tr, mr = map(float, a[22:24])
tk, mk = map(float, a[24:26])
print(f"proxy benchmark: median of {rounds} rounds, {secs} s wrk runs, nginx upstream on loopback")
print(f"{'':28}{'direct':>10}{'squid':>10}{'warden':>10}")
print(f"{'p50 latency, c=1 (us)':28}{ld:>10.1f}{ls:>10.1f}{lw:>10.1f}")
print(f"{'  added over direct (us)':28}{'':>10}{ls-ld:>10.1f}{lw-ld:>10.1f}")
print(f"{'requests/s, c=64':28}{rd:>10.0f}{rs:>10.0f}{rw:>10.0f}")
print(f"{'1 GiB CONNECT, TLS (MB/s)':28}{td:>10.0f}{ts:>10.0f}{tw:>10.0f}")
print(f"{'1 GiB CONNECT, plain (MB/s)':28}{md:>10.0f}{ms:>10.0f}{mw:>10.0f}")
print(f"(the floor, bench/relay.c, a minimal C relay: {tr:.0f} MB/s over TLS, {mr:.0f} MB/s plain)")
if tk:
    print(f"(the kernel-side relay, bench/sockmap_relay.c, no copy to user space: {tk:.0f} MB/s over TLS, {mk:.0f} MB/s plain)")
def per(r0, r1, held):
    n = int(held.split('/')[0] or 0)
    return f"{(r1 - r0) / n:.1f}" if n else "NA"
print(f"(direct with a new connection per request, the upstream side of a proxy without a pool:"
      f" p50 {lf:.1f} us, {rf:.0f} requests/s)")
print(f"{'RSS idle (MiB)':28}{'':>10}{s0/1024:>10.1f}{w0/1024:>10.1f}")
print(f"{'RSS with tunnels (MiB)':28}{'':>10}{s1/1024:>10.1f}{w1/1024:>10.1f}")
print(f"{'  tunnels held':28}{'':>10}{sheld:>10}{wheld:>10}")
print(f"{'  KiB per tunnel':28}{'':>10}{per(s0, s1, sheld):>10}{per(w0, w1, wheld):>10}")
added_s, added_w = ls - ld, lw - ld
ok = lambda b: "met" if b else "MISSED"
print()
print(f"added latency warden/squid = {added_w/added_s:.2f} (target <= 0.5: {ok(added_w <= 0.5*added_s)})"
      if added_s > 0 else "added latency: squid adds none measurable")
print(f"throughput warden/squid    = {rw/rs:.2f} (target >= 2: {ok(rw >= 2*rs)})")
print(f"CONNECT transfer over TLS warden/direct = {tw/td:.2f} (target >= 0.9: {ok(tw >= 0.9*td)}); squid/direct = {ts/td:.2f}; floor (relay.c)/direct = {tr/td:.2f}" + (f"; sockmap/direct = {tk/td:.2f}" if tk else ""))
print(f"CONNECT transfer, plain HTTP inside (read as HTTP by warden) warden/direct = {mw/md:.2f}; squid/direct = {ms/md:.2f}")
EOF
