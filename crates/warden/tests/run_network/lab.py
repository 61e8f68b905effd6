# The test lab's servers: the "internet" and the "host" a session must (not) reach.
# Runs inside the lab's own network namespace (see ../run_network.rs); stdlib only.
#
#   203.0.113.10  api.test git.test ssh.test other.test   HTTP :80, HTTPS :443,
#                 a server-first banner :2222, UDP sink :9999
#   203.0.113.53  the host's DNS resolver (logs every query name; answers rebind.test)
#   127.0.0.1:80  a service on the host's loopback        (must stay unreachable)
#   169.254.169.254:80  cloud metadata                     (must stay unreachable)
#   10.1.2.3:80   a private-network service                (must stay unreachable)
#
# Every request and datagram is appended to a log in the lab directory, so tests can
# assert what did (not) arrive.
import http.server
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading

LAB = sys.argv[1]
lock = threading.Lock()


def log(name, line):
    with lock, open(os.path.join(LAB, name), "a") as f:
        f.write(line + "\n")


def handler_for(label):
    class H(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *a, **kw):
            super().__init__(*a, directory=os.path.join(LAB, "www"), **kw)

        def log_message(self, *a):
            pass

        def hit(self):
            log("hits.log", "%s %s %s host=%s auth=%s" % (label, self.command, self.path, self.headers.get("Host"), self.headers.get("Authorization")))

        def reply(self, body):
            body = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.hit()
            if self.path.startswith("/echo"):
                self.reply("echo: %s" % self.headers.get("Authorization"))
            elif label != "public" or self.path.startswith("/hello"):
                self.reply("%s says hello to %s %s" % (label, self.headers.get("Host"), self.path))
            else:
                super().do_GET()

        def do_POST(self):
            self.hit()
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)
            self.reply("%s got POST %s" % (label, self.path))

    return H


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def http_server(addr, label, tls=False):
    s = Server(addr, handler_for(label))
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(LAB, "cert.crt"), os.path.join(LAB, "cert.key"))
        ctx.set_alpn_protocols(["http/1.1"])
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()


def banner(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(64)

    def serve(c):
        with c:
            log("hits.log", "banner connection")
            c.sendall(b"SSH-2.0-lab\r\n")
            while True:
                d = c.recv(4096)
                if not d:
                    return
                c.sendall(d)

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def udp_sink(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)

    def loop():
        while True:
            d, peer = s.recvfrom(65535)
            log("udp.log", "%s %r" % (peer, d[:64]))

    threading.Thread(target=loop, daemon=True).start()


def qname(msg):
    labels, i = [], 12
    while i < len(msg) and msg[i]:
        n = msg[i]
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return ".".join(labels), i + 1


def dns_server(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)
    answers = {"rebind.test": 0}

    def loop():
        while True:
            msg, peer = s.recvfrom(4096)
            name, end = qname(msg)
            qtype = struct.unpack("!H", msg[end:end + 2])[0] if end + 2 <= len(msg) else 0
            log("dns.log", "%s type=%d" % (name, qtype))
            question = msg[12:end + 4]
            flags = 0x8180
            answer = b""
            if name.lower().rstrip(".") == "rebind.test" and qtype == 1:
                # The classic rebinding server: a public answer, then loopback, ...
                k = answers["rebind.test"]
                answers["rebind.test"] += 1
                ip = "203.0.113.10" if k % 2 == 0 else "127.0.0.1"
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton(ip)
            elif name.lower().rstrip(".") != "rebind.test":
                flags = 0x8183  # NXDOMAIN
            head = msg[:2] + struct.pack("!HHHHH", flags, 1, 1 if answer else 0, 0, 0)
            s.sendto(head + question + answer, peer)

    threading.Thread(target=loop, daemon=True).start()


def forward_to_host(port, path):
    """127.0.0.1:port inside the lab, relayed to the Unix socket `path` that the test
    serves on the real host: how warden (not the session) reaches a control plane
    running outside the lab."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)

    def pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def loop():
        while True:
            c, _ = srv.accept()
            u = socket.socket(socket.AF_UNIX)
            u.connect(path)
            threading.Thread(target=pump, args=(c, u), daemon=True).start()
            threading.Thread(target=pump, args=(u, c), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


forward = os.path.join(LAB, "forward")
if os.path.exists(forward):
    port, path = open(forward).read().split(None, 1)
    forward_to_host(int(port), path.strip())
http_server(("203.0.113.10", 80), "public")
http_server(("203.0.113.10", 443), "public", tls=True)
http_server(("127.0.0.1", 80), "HOST-LOOPBACK-SECRET")
http_server(("169.254.169.254", 80), "METADATA-SECRET")
http_server(("10.1.2.3", 80), "PRIVATE-SECRET")
banner(("203.0.113.10", 2222))
udp_sink(("203.0.113.10", 9999))
dns_server(("203.0.113.53", 53))
open(os.path.join(LAB, "ready"), "w").close()
threading.Event().wait()
