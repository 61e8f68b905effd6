#!/bin/sh
# Runs inside `unshare --net --mount --pid --fork --kill-child --mount-proc`: a network
# namespace of its own playing "the internet and the host" for one test, so nothing a
# test does touches the real host network and everything dies with the test.
#   lab.sh LABDIR warden-command...
set -eu
LAB=$1
shift
here=$(pwd)
cd "$LAB"
ip link set lo up
for a in 203.0.113.10 203.0.113.53 169.254.169.254 10.1.2.3; do
    ip addr add "$a/32" dev lo
done
# The "host's" name service as warden (outside the session) sees it.
mount --bind "$LAB/hosts" /etc/hosts
mount --bind "$LAB/resolv.conf" /etc/resolv.conf
python3 "$LAB/lab.py" "$LAB" 2>>"$LAB/lab.err" &
i=0
while [ ! -e "$LAB/ready" ]; do
    sleep 0.05
    i=$((i + 1))
    if [ "$i" -gt 400 ]; then
        echo "lab servers did not start:" >&2
        cat "$LAB/lab.err" >&2
        exit 99
    fi
done
cd "$here"
set +e
"$@" &
w=$!
# A test may ask for warden to be killed (SIGKILL) mid-session.
(
    while [ ! -e "$LAB/kill" ]; do sleep 0.05; done
    kill -9 "$w"
) &
killer=$!
wait "$w"
echo "$?" >"$LAB/exit"
kill "$killer" 2>/dev/null
# Whatever of the session is still alive now (there must be nothing).
sleep 0.3
for p in /proc/[0-9]*; do
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null
    echo
done >"$LAB/left"
