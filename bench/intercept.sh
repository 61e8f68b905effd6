#!/usr/bin/env bash
# Intercepted HTTPS through `warden proxy` and through mitmproxy, side by side in one
# run: requests per second and added latency (issue #5 benchmark; target: warden
# >= 5x mitmproxy's throughput).
#
# One local HTTPS upstream (nginx, HTTP/1.1, TLS with a leaf from a bench CA that both
# proxies trust for upstream connections) answers `GET /` with a 6-byte body. The
# client is curl (HTTP/1.1 keep-alive, trusting each proxy's CA):
#   - throughput: REQS requests as `curl -Z --parallel-max CONC` (CONC connections,
#     each one CONNECT + intercepted TLS, then keep-alive); requests / wall time;
#   - latency: LAT requests one after another on one connection; the median of
#     curl's time_total, minus the same without a proxy = the added latency.
# Warden intercepts because a credential is bound to the upstream: every request
# carries the placeholder in `Authorization`, which warden replaces by the real value
# (and scrubs the response, records the injection in its audit log). mitmproxy
# (mitmdump, Debian package) only intercepts: warden does strictly more per request.
# Cases run alternately, ROUNDS times; the median of each is printed.
#
#   bash bench/intercept.sh [ROUNDS] [REQS] [CONC] [LAT]   (default 3 5000 8 300)
set -euo pipefail
ROUNDS=${1:-3}
REQS=${2:-5000}
CONC=${3:-8}
LAT=${4:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in nginx mitmdump openssl curl python3; do
  command -v "$tool" >/dev/null || {
    echo "bench/intercept.sh needs $tool (apt-get install nginx mitmproxy openssl curl python3)" >&2
    exit 1
  }
done
cargo build --release -q -p warden --manifest-path "$ROOT/Cargo.toml"
WARDEN=$CARGO_TARGET_DIR/release/warden

WORK=$(mktemp -d /tmp/warden-bench-intercept.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export WARDEN_HOME=$WORK/warden-home
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port)
WARDEN_PORT=$(free_port)
MITM_PORT=$(free_port)
UP=127.0.0.2
URL="https://$UP:$UP_PORT/"

# The upstream's CA and leaf (SAN IP:127.0.0.2).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=bench upstream" -keyout "$WORK/up.key" -out "$WORK/up.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:%s\n' "$UP" >"$WORK/ext.cnf"
openssl x509 -req -days 2 -in "$WORK/up.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -extfile "$WORK/ext.cnf" -out "$WORK/up.pem" 2>/dev/null

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen $UP:$UP_PORT ssl;
    ssl_certificate $WORK/up.pem;
    ssl_certificate_key $WORK/up.key;
    location / { return 200 "hello\n"; }
  }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)

# warden proxy: a credential bound to the upstream, so its connections are intercepted.
cat >"$WORK/policy.toml" <<EOF
version = 1
name = "bench"
[network]
allow = ["$UP/32:$UP_PORT"]
[tls]
extra_roots = ["$WORK/ca.pem"]
[[credentials]]
name = "bench"
source = "env:BENCH_TOKEN"
hosts = ["$UP"]
env = "BENCH_TOKEN"
EOF
BENCH_TOKEN=bench-real-token-0123456789abcdef "$WARDEN" proxy --policy "$WORK/policy.toml" \
  --listen "127.0.0.1:$WARDEN_PORT" --ca-bundle "$WORK/warden-ca.pem" \
  --audit "$WORK/audit.jsonl" 2>"$WORK/warden.err" &
PIDS+=($!)

# mitmproxy: plain interception, verifying the upstream against the bench CA.
mitmdump -q --listen-host 127.0.0.1 --listen-port "$MITM_PORT" \
  --set confdir="$WORK/mitm" --set ssl_verify_upstream_trusted_ca="$WORK/ca.pem" \
  --set connection_strategy=lazy >"$WORK/mitm.log" 2>&1 &
PIDS+=($!)

wait_for() { # file, what
  for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done
  echo "$2 did not start: $(cat "$WORK"/*.err "$WORK/mitm.log" "$WORK/nginx/error.log" 2>/dev/null)" >&2
  exit 1
}
wait_for "$WORK/nginx/nginx.pid" nginx
wait_for "$WORK/warden-ca.pem" "warden proxy"
wait_for "$WORK/mitm/mitmproxy-ca-cert.pem" mitmproxy
PLACEHOLDER=$(sed -n 's/^  export BENCH_TOKEN=//p' "$WORK/warden.err")
[ -n "$PLACEHOLDER" ] || { echo "no placeholder in: $(cat "$WORK/warden.err")" >&2; exit 1; }

# name -> curl options
declare -A OPTS=(
  [direct]="--cacert $WORK/ca.pem"
  [warden]="-x http://127.0.0.1:$WARDEN_PORT --cacert $WORK/warden-ca.pem"
  [mitmproxy]="-x http://127.0.0.1:$MITM_PORT --cacert $WORK/mitm/mitmproxy-ca-cert.pem"
)
CASES=(direct warden mitmproxy)
H=(-H "Authorization: Bearer $PLACEHOLDER")

# Each proxy works before anything is measured (and warden injected the credential).
for c in "${CASES[@]}"; do
  # shellcheck disable=SC2086
  got=$(curl -sS --http1.1 -m 10 ${OPTS[$c]} "${H[@]}" "$URL")
  [ "$got" = hello ] || { echo "$c: unexpected answer: $got" >&2; exit 1; }
done
# (The audit log is written in the background: give it a moment.)
for _ in $(seq 100); do
  grep -qs '"action":"inject"' "$WORK/audit.jsonl" && break
  sleep 0.05
done
grep -qs '"action":"inject"' "$WORK/audit.jsonl" || { echo "warden did not inject" >&2; exit 1; }

: >"$WORK/out"
for ((r = 0; r < ROUNDS; r++)); do
  for c in "${CASES[@]}"; do
    # Throughput.
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    codes=$(curl -s --http1.1 -Z --parallel-max "$CONC" ${OPTS[$c]} "${H[@]}" \
      -o /dev/null -w '%{http_code}\n' "$URL?[1-$REQS]" 2>/dev/null | grep -c '^200$' || true)
    end=$(date +%s.%N)
    [ "$codes" = "$REQS" ] || { echo "$c: only $codes of $REQS requests got 200" >&2; exit 1; }
    echo "rps $c $(python3 -c "print($REQS / ($end - $start))")" >>"$WORK/out"
    # Latency: one connection, one request at a time.
    # shellcheck disable=SC2086
    curl -s --http1.1 ${OPTS[$c]} "${H[@]}" -o /dev/null -w '%{time_total}\n' "$URL?[1-$LAT]" |
      python3 -c 'import statistics, sys; print(statistics.median(float(l) for l in sys.stdin) * 1e6)' |
      sed "s/^/lat $c /" >>"$WORK/out"
  done
done

python3 - "$WORK/out" "$ROUNDS" "$REQS" "$CONC" "$LAT" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    kind, case, v = line.split()
    runs[(kind, case)].append(float(v))
rounds, reqs, conc, lat = sys.argv[2:]
med = {k: statistics.median(v) for k, v in runs.items()}
print(f"intercepted HTTPS GET, HTTP/1.1 keep-alive, median of {rounds} rounds")
print(f"  throughput: {reqs} requests over {conc} connections; latency: median of {lat} sequential requests")
print(f"  {'':10} {'req/s':>9} {'latency us':>11} {'added us':>9}")
for c in ["direct", "warden", "mitmproxy"]:
    rps, l = med[("rps", c)], med[("lat", c)]
    added = "" if c == "direct" else f"{l - med[('lat', 'direct')]:9.0f}"
    print(f"  {c:10} {rps:9.0f} {l:11.0f} {added}")
print(f"  warden / mitmproxy throughput: {med[('rps', 'warden')] / med[('rps', 'mitmproxy')]:.1f}x")
print("  per round (req/s): " + "; ".join(
    f"{c} " + " ".join(f"{v:.0f}" for v in runs[("rps", c)]) for c in ["direct", "warden", "mitmproxy"]))
PY
