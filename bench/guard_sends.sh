#!/usr/bin/env bash
# Cost of the unix-socket guard on sends: bench/guard_sends.c on the host and in a
# `warden run` session, in one run, ROUNDS times each alternately; prints the median ns per
# send+recv pair of each case and the session/host ratio. Sends without a destination
# (`send()`) stay in the kernel; `sendmsg` and `sendto` with a destination are performed
# by the supervisor (crates/warden-sandbox/src/unixsock.rs).
#
#   bash bench/guard_sends.sh [ROUNDS] [SENDS]      (default 5 rounds of 20000 sends)
set -euo pipefail
ROUNDS=${1:-5}
SENDS=${2:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

cargo build --release -q -p warden --manifest-path "$ROOT/Cargo.toml"
WARDEN=$CARGO_TARGET_DIR/release/warden

WORK=$(mktemp -d /tmp/warden-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
WS=$WORK/ws; mkdir -p "$WS"
export WARDEN_HOME=$WORK/warden-home
cat > "$WORK/policy.toml" <<'TOML'
version = 1
name = "bench"
[filesystem]
workspace = "rw"
TOML
gcc -O2 -o "$WS/guard_sends" "$ROOT/bench/guard_sends.c"

cd "$WS"
for ((i = 0; i < ROUNDS; i++)); do
  ./guard_sends "$SENDS" | sed 's/^/host /' >>"$WORK/out"
  "$WARDEN" run --policy "$WORK/policy.toml" --workspace "$WS" -- ./guard_sends "$SENDS" |
    sed 's/^/session /' >>"$WORK/out"
done
python3 - "$WORK/out" "$ROUNDS" "$SENDS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    where, rest = line.split(" ", 1)
    case, ns = rest.rsplit(None, 2)[0].strip(), float(rest.rsplit(None, 2)[1])
    runs[(where, case)].append(ns)
cases = list(dict.fromkeys(c for _, c in runs))
print(f"ns per send+recv pair, median of {sys.argv[2]} rounds of {sys.argv[3]}:")
print(f"  {'':38} {'host':>8} {'session':>8} {'ratio':>7}")
for c in cases:
    h, s = statistics.median(runs[("host", c)]), statistics.median(runs[("session", c)])
    print(f"  {c:38} {h:8.0f} {s:8.0f} {s / h:6.1f}x")
PY
