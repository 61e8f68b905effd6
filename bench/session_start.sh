#!/usr/bin/env bash
# Session start-to-exit of /bin/true: `warden run` (namespaces backend, a policy with
# network rules) side by side with bubblewrap at comparable isolation and gVisor's
# `runsc do`, in one run, warden and bwrap taking turns (bench/interleave.py). Prints the
# three medians and the ratios (target: <= 1.5x bwrap; >= 10x faster than runsc).
#
#   bash bench/session_start.sh [RUNS]      (default 50 runs each, after 5 warm-ups)
#   WARDEN_BASELINE=/path/to/old/warden bash bench/session_start.sh [RUNS]
#                                           (that build takes turns too: before/after)
set -euo pipefail
RUNS=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need bwrap || ! need runsc || ! need python3; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    need bwrap || apt-get install -y -qq bubblewrap >/dev/null 2>&1 || echo "bench: could not install bubblewrap" >&2
    need runsc || apt-get install -y -qq runsc >/dev/null 2>&1 || echo "bench: could not install runsc" >&2
    need python3 || apt-get install -y -qq python3 >/dev/null 2>&1 || echo "bench: could not install python3" >&2
  fi
fi

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
deny = ["uploads.github.com"]
[filesystem]
workspace = "rw"
deny = ["**/.env", "~/.ssh", "**/*.pem"]
TOML

BWRAP_ARGS=(--unshare-all --die-with-parent --new-session
  --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/sbin /sbin
  --symlink usr/lib /lib --symlink usr/lib64 /lib64
  --ro-bind /etc/passwd /etc/passwd --ro-bind /etc/group /etc/group
  --ro-bind /etc/ld.so.cache /etc/ld.so.cache
  --proc /proc --dev /dev --tmpfs /tmp --bind "$WS" "$WS" --chdir "$WS")
RUNSC=(runsc --network=none)
[ "$(id -u)" = 0 ] || RUNSC=(runsc --rootless --network=none)

# warden and bwrap take turns; runsc (≈ 150 ms a run, and a heavy teardown that would
# slow whichever run follows it) is measured on its own afterwards.
declare -A MED=([warden]=NA [bwrap]=NA [runsc]=NA [baseline]=NA)
while read -r name median _; do MED[$name]=$median; done < <(
  python3 "$ROOT/bench/interleave.py" "$RUNS" 5 \
    warden "$WARDEN run --policy $WORK/policy.toml --workspace $WS -- /bin/true" \
    bwrap "bwrap ${BWRAP_ARGS[*]} /bin/true" \
    ${WARDEN_BASELINE:+baseline "$WARDEN_BASELINE run --policy $WORK/policy.toml --workspace $WS -- /bin/true"}
  if need runsc; then python3 "$ROOT/bench/interleave.py" "$RUNS" 5 runsc "${RUNSC[*]} do /bin/true"; fi
)

echo "session start-to-exit of /bin/true, median of $RUNS runs each (ms; warden and bwrap interleaved):"
printf '  %-8s %8s\n' warden "${MED[warden]}" bwrap "${MED[bwrap]}" runsc "${MED[runsc]}"
[ -z "${WARDEN_BASELINE:-}" ] || printf '  %-8s %8s  (%s)\n' baseline "${MED[baseline]}" "$WARDEN_BASELINE"
if [ "${MED[warden]}" != NA ] && [ "${MED[bwrap]}" != NA ]; then
  python3 -c "import sys; w,b=map(float,sys.argv[1:3]); print('  warden/bwrap = %.2fx (target <= 1.5x)' % (w/b))" "${MED[warden]}" "${MED[bwrap]}"
fi
if [ "${MED[warden]}" != NA ] && [ "${MED[runsc]}" != NA ]; then
  python3 -c "import sys; w,r=map(float,sys.argv[1:3]); print('  runsc/warden = %.1fx (target >= 10x)' % (r/w))" "${MED[warden]}" "${MED[runsc]}"
fi
