#!/usr/bin/env bash
# Session start-to-exit of /bin/true: `warden run` (namespaces backend, a policy with
# network rules) side by side with bubblewrap at comparable isolation and gVisor's
# `runsc do`, in one run. Prints the three medians and the warden/bwrap ratio
# (target: <= 1.5x bwrap; >= 10x faster than runsc).
#
#   bash bench/session_start.sh [RUNS]      (default 50 runs each, after 5 warm-ups)
set -euo pipefail
RUNS=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need bwrap || ! need runsc || ! need hyperfine; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    need bwrap || apt-get install -y -qq bubblewrap >/dev/null 2>&1 || echo "bench: could not install bubblewrap" >&2
    need runsc || apt-get install -y -qq runsc >/dev/null 2>&1 || echo "bench: could not install runsc" >&2
    need hyperfine || apt-get install -y -qq hyperfine >/dev/null 2>&1 || echo "bench: no hyperfine; using a bash loop" >&2
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

declare -A CMDS
CMDS[warden]="$WARDEN run --policy $WORK/policy.toml --workspace $WS -- /bin/true"
CMDS[bwrap]="bwrap ${BWRAP_ARGS[*]} /bin/true"
CMDS[runsc]="${RUNSC[*]} do /bin/true"

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
for name in warden bwrap runsc; do
  bin=${CMDS[$name]%% *}
  if ! need "$bin" && [ ! -x "$bin" ]; then MED[$name]=NA; continue; fi
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

echo "session start-to-exit of /bin/true, median of $RUNS runs (ms):"
printf '  %-8s %8s\n' warden "${MED[warden]}" bwrap "${MED[bwrap]}" runsc "${MED[runsc]}"
if [ "${MED[warden]}" != NA ] && [ "${MED[bwrap]}" != NA ]; then
  python3 -c "import sys; w,b=map(float,sys.argv[1:3]); print('  warden/bwrap = %.2fx (target <= 1.5x)' % (w/b))" "${MED[warden]}" "${MED[bwrap]}"
fi
if [ "${MED[warden]}" != NA ] && [ "${MED[runsc]}" != NA ]; then
  python3 -c "import sys; w,r=map(float,sys.argv[1:3]); print('  runsc/warden = %.1fx (target >= 10x)' % (r/w))" "${MED[warden]}" "${MED[runsc]}"
fi
