#!/usr/bin/env bash
# Session start-to-exit of /bin/true under `warden run --backend gvisor` (a policy with
# network rules: the egress proxy, the session root, the audit log and all) side by side
# with bare gVisor, `runsc do /bin/true`, in one run. Prints both medians and the ratio
# (target: <= 1.2x bare runsc).
#
#   bash bench/gvisor_start.sh [RUNS]      (default 30 runs each, after 5 warm-ups)
set -euo pipefail
RUNS=${1:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need runsc || ! need hyperfine; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    need hyperfine || apt-get install -y -qq hyperfine >/dev/null 2>&1 || echo "bench: no hyperfine; using a bash loop" >&2
  fi
fi
[ "$(id -u)" != 0 ] || "$ROOT/scripts/install-gvisor" || echo "bench: could not install gVisor (scripts/install-gvisor)" >&2
need runsc || { echo "bench: runsc is required (sudo scripts/install-gvisor)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench: the gvisor backend runs only for root" >&2; exit 1; }

cargo build --release -q -p warden --manifest-path "$ROOT/Cargo.toml"
WARDEN=$CARGO_TARGET_DIR/release/warden

WORK=$(mktemp -d /tmp/warden-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
WS=$WORK/ws; mkdir -p "$WS"
export WARDEN_HOME=$WORK/warden-home
cat > "$WORK/policy.toml" <<'TOML'
version = 1
name = "bench"
[network]
allow = ["api.anthropic.com", "*.githubusercontent.com", "pypi.org", "registry.npmjs.org:443"]
[filesystem]
workspace = "rw"
deny = ["**/.env", "~/.ssh", "**/*.pem"]
[sandbox]
backend = "gvisor"
TOML

declare -A CMDS
CMDS[warden]="$WARDEN run --policy $WORK/policy.toml --workspace $WS --backend gvisor -- /bin/true"
# runsc do's own network needs iptables; none is the cheapest it has.
CMDS[runsc]="runsc --network=none do /bin/true"

median_ms() { # command... -> median wall time in ms over $RUNS runs (bash loop)
  local i t0 t1 ts=()
  for i in 1 2 3 4 5; do "$@" >/dev/null 2>&1 || true; done
  for ((i = 0; i < RUNS; i++)); do
    t0=$(date +%s%N); "$@" >/dev/null 2>&1 || true; t1=$(date +%s%N)
    ts+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.2f", m/1000}'
}

declare -A MED
for name in warden runsc; do
  # shellcheck disable=SC2086
  if ! ${CMDS[$name]} >/dev/null 2>"$WORK/$name.err"; then
    echo "bench: $name failed: $(head -c 300 "$WORK/$name.err")" >&2; MED[$name]=NA; continue
  fi
  if need hyperfine; then
    hyperfine -N -w 5 -r "$RUNS" --export-json "$WORK/$name.json" "${CMDS[$name]}" >/dev/null 2>&1
    MED[$name]=$(python3 -c "import json,sys; print('%.2f' % (json.load(open(sys.argv[1]))['results'][0]['median']*1000))" "$WORK/$name.json")
  else
    # shellcheck disable=SC2086
    MED[$name]=$(median_ms ${CMDS[$name]})
  fi
done

echo "start-to-exit of /bin/true under gVisor, median of $RUNS runs (ms):"
printf '  %-22s %8s\n' "warden --backend gvisor" "${MED[warden]}" "runsc do" "${MED[runsc]}"
if [ "${MED[warden]}" != NA ] && [ "${MED[runsc]}" != NA ]; then
  python3 -c "import sys; w,r=map(float,sys.argv[1:3]); print('  warden/runsc = %.2fx (target <= 1.2x)' % (w/r))" "${MED[warden]}" "${MED[runsc]}"
fi
