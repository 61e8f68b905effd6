# Runs inside a session (tests/unix_dgram.rs). argv[1]: the host's abstract socket name.
# The host bound a datagram socket at ./host.dgram (the workspace) and one at that
# abstract name; nothing sent here may reach either. The session's own datagram sockets,
# socketpairs and other sends must keep working through the guard.
import array
import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
signal.alarm(120)  # a hang fails the test (SIGALRM ends the session) instead of stalling CI
AF_UNIX, DGRAM = socket.AF_UNIX, socket.SOCK_DGRAM


class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]


def sun(dest):
    """A sockaddr_un buffer of exactly the address's length (abstract: no NUL)."""
    if isinstance(dest, str):
        dest = dest.encode()
    raw = struct.pack("H", AF_UNIX) + dest + (b"" if dest.startswith(b"\0") else b"\0")
    return ctypes.create_string_buffer(raw, len(raw)), len(raw)


def oserror():
    e = ctypes.get_errno()
    return OSError(e, os.strerror(e))


def sendmmsg(sock, msgs):
    """libc sendmmsg (Python has none): [(data, dest or None)] -> (count, msg_len list)."""
    keep, arr = [], (mmsghdr * len(msgs))()
    for i, (data, dest) in enumerate(msgs):
        buf = ctypes.create_string_buffer(data, len(data))
        iov = iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
        keep += [buf, iov]
        arr[i].hdr.iov, arr[i].hdr.iovlen = ctypes.pointer(iov), 1
        if dest is not None:
            a, n = sun(dest)
            keep.append(a)
            arr[i].hdr.name, arr[i].hdr.namelen = ctypes.cast(a, ctypes.c_void_p), n
    n = libc.sendmmsg(sock.fileno(), arr, len(msgs), 0)
    if n < 0:
        raise oserror()
    return n, [arr[i].len for i in range(len(msgs))]


def refused(what, f, want=(errno.ECONNREFUSED,)):
    try:
        f()
    except OSError as e:
        if want and e.errno not in want:
            sys.exit(f"{what}: {e!r}, want errno {want}")
        return
    sys.exit(f"{what}: went through to the host")


# --- attacks: the host's sockets stay out of reach ---------------------------------
host_abs = os.path.join(os.getcwd(), "host.dgram")
abstract = b"\0" + sys.argv[1].encode()
os.symlink("host.dgram", "sym.dgram")
os.link("host.dgram", "hard.dgram")  # the same inode under a name of the session's
s = socket.socket(AF_UNIX, DGRAM)
targets = [("relative path", "host.dgram"), ("absolute path", host_abs),
           ("symlink", "sym.dgram"), ("hard link", "hard.dgram"), ("abstract", abstract)]
for name, dest in targets:
    refused(f"sendto {name}", lambda: s.sendto(b"ATTACK", dest))
    refused(f"sendmsg {name}", lambda: s.sendmsg([b"ATT", b"ACK"], [], 0, dest))
    refused(f"sendmmsg {name}", lambda: sendmmsg(s, [(b"ATTACK", dest)] * 2))
    refused(f"connect {name}", lambda: socket.socket(AF_UNIX, DGRAM).connect(dest))
# From a connected socket too: the name given to the send wins over the peer.
mine = socket.socket(AF_UNIX, DGRAM)
mine.bind("mine.dgram")
s2 = socket.socket(AF_UNIX, DGRAM)
s2.connect("mine.dgram")
refused("sendto from a connected socket", lambda: s2.sendto(b"ATTACK", "host.dgram"))
# A magic link to an O_PATH descriptor of the host socket does not resolve.
opath = os.open("host.dgram", os.O_PATH)
refused("sendto /proc/self/fd", lambda: s.sendto(b"ATTACK", f"/proc/self/fd/{opath}"), ())
# A batch whose second message names the host: the first goes, the second does not.
n, lens = sendmmsg(s, [(b"first", "mine.dgram"), (b"ATTACK", "host.dgram")])
assert (n, lens[0]) == (1, 5), (n, lens)
assert mine.recv(16) == b"first"

# Swapping the address while the calls are in flight (the supervisor copies it once):
# a C program, so the swapping thread really runs while the other waits in sendto().
subprocess.run(["gcc", "-O2", "-pthread", "race.c", "-o", "race"], check=True)
race = subprocess.run(["./race", "ownx.dgram", "host.dgram"], capture_output=True, text=True)
if race.returncode != 0:
    sys.exit(f"race: exit {race.returncode}: {race.stderr}")
print(race.stdout.strip())

# --- what must keep working ---------------------------------------------------------
c = socket.socket(AF_UNIX, DGRAM)
c.sendto(b"one", "mine.dgram")
assert mine.recv(16) == b"one"
c.sendmsg([b"t", b"wo"], [], 0, os.path.abspath("mine.dgram"))
assert mine.recv(16) == b"two"
n, lens = sendmmsg(c, [(b"three", "mine.dgram"), (b"four!", "mine.dgram")])
assert (n, lens) == (2, [5, 5]), (n, lens)
assert (mine.recv(16), mine.recv(16)) == (b"three", b"four!")
oa = socket.socket(AF_UNIX, DGRAM)
oa.bind(b"\0session-own")
c.sendto(b"abs", b"\0session-own")
assert oa.recv(16) == b"abs"

# From a thread that is not the group leader.
t = threading.Thread(target=lambda: c.sendto(b"thread", "mine.dgram"))
t.start()
t.join()
assert mine.recv(16) == b"thread"

# Datagram socketpair: descriptors and credentials travel.
a, b = socket.socketpair(AF_UNIX, DGRAM)
r, w = os.pipe()
a.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
_, anc, _, _ = b.recvmsg(16, socket.CMSG_SPACE(4))
fds = array.array("i")
fds.frombytes(anc[0][2])
os.write(fds[0], b"via-fd")
assert os.read(r, 16) == b"via-fd"
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
cred = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
a.sendmsg([b"cred"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, cred)])
_, anc, _, _ = b.recvmsg(16, socket.CMSG_SPACE(12))
assert struct.unpack("iII", anc[0][2])[1:] == (os.getuid(), os.getgid()), anc
forged = struct.pack("iII", os.getpid() + 1, os.getuid(), os.getgid())
refused("forged SCM_CREDENTIALS",
        lambda: a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, forged)]),
        (errno.EPERM,))
n, lens = sendmmsg(a, [(b"x", None), (b"yy", None)])
assert (n, lens) == (2, [1, 2]), (n, lens)
assert (b.recv(4), b.recv(4)) == (b"x", b"yy")

# A full non-blocking socket says EAGAIN; a blocking one waits for room.
a.setblocking(False)
for i in range(100000):
    try:
        a.sendmsg([b"fill"])
    except BlockingIOError:
        break
else:
    sys.exit("a datagram socketpair never filled")
a.setblocking(True)
# The socket is writable again once its queued bytes drop to a quarter of its buffer:
# take out every datagram queued above.
drain = threading.Timer(0.2, lambda: [b.recv(8) for _ in range(i)])
drain.start()
a.sendmsg([b"waited"])  # blocks until the drain makes room
drain.join()
assert b.recv(8) == b"waited"

# Stream: a large blocking sendmsg arrives whole and in order; EPIPE once the peer is gone.
sa, sb = socket.socketpair()
payload = os.urandom(3 << 20)
received = bytearray()


def read_all():
    while len(received) < len(payload):
        received.extend(sb.recv(1 << 16))


reader = threading.Thread(target=read_all)
reader.start()
view, sent = memoryview(payload), 0
while sent < len(payload):
    sent += sa.sendmsg([view[sent:sent + (1 << 20)], view[sent + (1 << 20):]])
reader.join()
assert bytes(received) == payload
sb.close()
refused("sendmsg to a closed stream peer", lambda: sa.sendmsg([b"x"]), (errno.EPIPE,))
# SIGPIPE reaches the sender as it would without the guard, and not with MSG_NOSIGNAL.
pipe = ("import signal, socket, sys; signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "a, b = socket.socketpair(); b.close()\n"
        "try: a.sendmsg([b'x'], [], int(sys.argv[1]))\n"
        "except BrokenPipeError: sys.exit(7)\n")
for flags, want in ((0, -signal.SIGPIPE), (socket.MSG_NOSIGNAL, 7)):
    got = subprocess.run([sys.executable, "-c", pipe, str(flags)]).returncode
    assert got == want, ("SIGPIPE", flags, got, want)

# Other families through the supervisor: UDP with an address, on the session's loopback.
u = socket.socket(socket.AF_INET, DGRAM)
u.bind(("127.0.0.1", 0))
v = socket.socket(socket.AF_INET, DGRAM)
v.sendto(b"udp", u.getsockname())
v.sendmsg([b"udp2"], [], 0, u.getsockname())
assert (u.recv(8), u.recv(8)) == (b"udp", b"udp2")
print("dgram guard ok")
