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
if ! need python3 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq python3 >/dev/null 2>&1 || echo "bench: could not install python3" >&2
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

# Both run gVisor: they take turns (bench/interleave.py). runsc do's own network needs
# iptables; none is the cheapest it has.
declare -A MED=([warden]=NA [runsc]=NA)
while read -r name median _; do MED[$name]=$median; done < <(
  python3 "$ROOT/bench/interleave.py" "$RUNS" 5 \
    warden "$WARDEN run --policy $WORK/policy.toml --workspace $WS --backend gvisor -- /bin/true" \
    runsc "runsc --network=none do /bin/true"
)

echo "start-to-exit of /bin/true under gVisor, median of $RUNS runs each, interleaved (ms):"
printf '  %-22s %8s\n' "warden --backend gvisor" "${MED[warden]}" "runsc do" "${MED[runsc]}"
if [ "${MED[warden]}" != NA ] && [ "${MED[runsc]}" != NA ]; then
  python3 -c "import sys; w,r=map(float,sys.argv[1:3]); print('  warden/runsc = %.2fx (target <= 1.2x)' % (w/r))" "${MED[warden]}" "${MED[runsc]}"
fi
