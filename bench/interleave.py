#!/usr/bin/env python3
"""Wall time of several commands, run in turns: A B C A B C ... so that drift (load,
caches, the kernel's background cleanup of the previous run) falls on all of them alike
and the ratios of one run can be compared. Prints `NAME MEDIAN_MS P25_MS P75_MS` per
command; a command that fails once is reported as `NAME NA` with its stderr on ours.

    interleave.py RUNS WARMUP NAME 'COMMAND ...' [NAME 'COMMAND ...' ...]

Each command is split like a shell would (no shell runs it) and started with
posix_spawn, stdout and stderr to /dev/null; the time is from spawn to reaped.
"""
import os
import shlex
import statistics
import subprocess
import sys
import time


def main():
    runs, warmup = int(sys.argv[1]), int(sys.argv[2])
    pairs = sys.argv[3:]
    names, cmds = pairs[0::2], [shlex.split(c) for c in pairs[1::2]]
    ok = []
    for name, cmd in zip(names, cmds):
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.stderr.write(f"bench: {name} failed ({r.returncode}): {r.stderr[:300]!r}\n")
        ok.append(r.returncode == 0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    out = [(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)]
    times = [[] for _ in cmds]
    for i in range(warmup + runs):
        for k, cmd in enumerate(cmds):
            if not ok[k]:
                continue
            t0 = time.perf_counter_ns()
            pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=out)
            os.waitpid(pid, 0)
            if i >= warmup:
                times[k].append((time.perf_counter_ns() - t0) / 1e6)
    for name, t, good in zip(names, times, ok):
        if not good:
            print(f"{name} NA")
            continue
        t.sort()
        print(f"{name} {statistics.median(t):.2f} {t[len(t) // 4]:.2f} {t[3 * len(t) // 4]:.2f}")


main()
