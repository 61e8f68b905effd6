//! The attack suite of `warden run` (SPEC §7 invariants 1, 3, 4; THREATS.md "Session
//! boundary"): each test runs a real session and tries to get out; the attempt must fail,
//! and where the policy decided something, the audit log must say so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod run_common;

use run_common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn attack(env: &Env, name: &str, arg: Option<&str>) {
    let Some(_) = env.attack_bin() else { return };
    let mut cmd = vec!["./attack", name];
    if let Some(a) = arg {
        cmd.push(a);
    }
    let o = env.run(&cmd);
    assert_code(&o, 0);
}

// ---- host files -------------------------------------------------------------------------

fn host_home_is_invisible(b: B) {
    let env = Env::new_for(b, BASE);
    std::fs::write(env.home.join("secret.txt"), "HOME-SECRET").unwrap();
    std::fs::create_dir_all(env.home.join(".ssh")).unwrap();
    std::fs::write(env.home.join(".ssh/id_ed25519"), "SSH-KEY").unwrap();
    let o = env.sh(&format!(
        "cat {h}/secret.txt {h}/.ssh/id_ed25519 2>&1; ls -A {h}; echo HOME=$HOME; cat /root/.bash_history 2>&1 | head -1",
        h = env.home.display()
    ));
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        !out.contains("HOME-SECRET") && !out.contains("SSH-KEY"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains(&format!("HOME={}", env.home.display())),
        "{}",
        text(&o)
    );
}

fn deny_patterns_hide_files_inside_the_workspace(b: B) {
    let env = Env::new_for(b, BASE);
    std::fs::write(env.ws.join(".env"), "TOP-SECRET").unwrap();
    std::fs::create_dir_all(env.ws.join("app/config")).unwrap();
    std::fs::write(env.ws.join("app/config/.env"), "NESTED-SECRET").unwrap();
    std::fs::write(env.ws.join("app/server.pem"), "PEM-SECRET").unwrap();
    std::fs::write(env.ws.join("app/readme"), "visible").unwrap();
    // Read, overwrite, delete, rename away, and delete the directory holding one: the
    // workspace is writable, the hidden files must stay both unreadable and intact.
    let o = env.sh(
        "cat .env app/config/.env app/server.pem 2>&1; cat app/readme; \
         echo x > .env 2>&1 || echo write-denied; rm -f .env 2>&1 || echo rm-denied; \
         mv app/server.pem app/stolen 2>&1 || echo mv-denied; cat app/stolen 2>&1; \
         rm -rf app/config 2>&1 || echo rmdir-denied; ls -l .env app 2>&1",
    );
    let out = stdout(&o);
    assert!(!out.contains("SECRET"), "{}", text(&o));
    assert!(
        out.contains("visible")
            && out.contains("write-denied")
            && out.contains("rm-denied")
            && out.contains("mv-denied")
            && out.contains("rmdir-denied"),
        "{}",
        text(&o)
    );
    for (path, content) in [
        (".env", "TOP-SECRET"),
        ("app/config/.env", "NESTED-SECRET"),
        ("app/server.pem", "PEM-SECRET"),
    ] {
        assert_eq!(
            std::fs::read_to_string(env.ws.join(path)).ok().as_deref(),
            Some(content),
            "{path} changed on the host: {}",
            text(&o)
        );
    }
    let ev = env.audit_events();
    assert!(
        ev.iter().any(|e| e["surface"] == "filesystem"
            && e["action"] == "hide"
            && e["target"] == "**/.env"
            && e["decision"] == "deny"),
        "audit lacks the .env decision: {ev:?}"
    );
}

fn deny_pattern_hides_a_directory_and_a_home_path_inside_a_mount(b: B) {
    let env = Env::new_for(
        b,
        &format!(
            "{BASE}\n[[filesystem.mounts]]\nhost = \"~\"\npath = \"/data/home\"\nmode = \"ro\"\n"
        ),
    );
    std::fs::create_dir_all(env.home.join(".ssh")).unwrap();
    std::fs::write(env.home.join(".ssh/id_rsa"), "SSH-KEY").unwrap();
    std::fs::write(env.home.join("notes"), "visible-note").unwrap();
    let o = env.sh("cat /data/home/notes; ls -A /data/home/.ssh; cat /data/home/.ssh/id_rsa 2>&1");
    let out = stdout(&o);
    assert!(out.contains("visible-note"), "{}", text(&o));
    assert!(
        !out.contains("SSH-KEY") && !out.contains("id_rsa\n"),
        "{}",
        text(&o)
    );
}

fn a_mount_the_policy_denies_is_not_mounted_and_is_recorded(b: B) {
    let env = Env::new_for(
        b,
        &format!(
            "{BASE}\n[[filesystem.mounts]]\nhost = \"~/.ssh\"\npath = \"/keys\"\nmode = \"ro\"\n"
        ),
    );
    std::fs::create_dir_all(env.home.join(".ssh")).unwrap();
    std::fs::write(env.home.join(".ssh/id_rsa"), "SSH-KEY").unwrap();
    let o = env.sh("cat /keys/id_rsa 2>&1; ls -A /keys 2>&1; exit 0");
    assert!(!stdout(&o).contains("SSH-KEY"), "{}", text(&o));
    let ev = env.audit_events();
    let ssh = env.home.join(".ssh").display().to_string();
    assert!(
        ev.iter().any(|e| e["surface"] == "filesystem"
            && e["action"] == "mount"
            && e["target"] == ssh.as_str()
            && e["decision"] == "deny"
            && e["rule"]
                .as_str()
                .is_some_and(|r| r.contains("policy.toml"))),
        "no deny decision for {ssh}: {ev:#?}"
    );
}

/// `env`'s policy becomes [`BASE`] with one credential, `api`, read from `source` and
/// bound to api.example.com.
fn bind_credential(env: &Env, source: &str) {
    let policy = format!(
        "version = 1\nname = \"test\"\n{BASE}\n[[credentials]]\nname = \"api\"\n\
         source = \"{source}\"\nhosts = [\"api.example.com\"]\n"
    );
    std::fs::write(&env.policy, policy).unwrap();
}

/// Warden's own state inside the workspace (WARDEN_HOME with the local secret store and
/// the audit log, the file a credential is read from) is hidden: the session can neither
/// read a real secret nor forge or erase audit events, nor plant state for the next run.
fn wardens_own_state_in_the_workspace_is_hidden(b: B) {
    let env = Env::new_for(b, BASE);
    let creds = env.ws.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("token"), "FILE-SECRET-1234").unwrap();
    std::fs::set_permissions(creds.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    bind_credential(&env, &format!("file:{}", creds.join("token").display()));
    let home = env.ws.join(".warden");
    let mut set = Command::new(WARDEN)
        .args(["secret", "set", "LOCAL"])
        .env("WARDEN_HOME", &home)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut set.stdin.take().unwrap(), b"STORE-SECRET-5678").unwrap();
    assert!(set.wait().unwrap().success());
    let o = env
        .cmd(
            &[],
            &[
                "/bin/sh",
                "-c",
                "cat .warden/secrets/* creds/token 2>&1; ls -A .warden; \
                 echo FORGED >> .warden/audit.jsonl 2>&1 || echo audit-denied; \
                 mkdir .warden/runsc-release 2>&1 || echo plant-denied; \
                 rm -rf .warden 2>&1 || echo rm-denied; exit 0",
            ],
        )
        .env("WARDEN_HOME", &home)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let out = stdout(&o);
    for secret in ["STORE-SECRET-5678", "FILE-SECRET-1234"] {
        assert!(!out.contains(secret), "{secret} seen: {}", text(&o));
    }
    assert!(
        out.contains("audit-denied") && out.contains("plant-denied") && out.contains("rm-denied"),
        "{}",
        text(&o)
    );
    // The host's state is intact, and the log says what was hidden.
    assert!(home.join("secrets").is_dir());
    assert_eq!(
        std::fs::read_to_string(creds.join("token")).unwrap(),
        "FILE-SECRET-1234"
    );
    let log = std::fs::read_to_string(home.join("audit.jsonl")).unwrap();
    assert!(!log.lines().any(|l| l == "FORGED"), "{log}");
    let hidden: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["surface"] == "filesystem" && e["action"] == "hide")
        .collect();
    for path in [home.clone(), creds.join("token")] {
        assert!(
            hidden
                .iter()
                .any(|e| e["target"] == path.display().to_string().as_str()),
            "no hide event for {}: {hidden:#?}",
            path.display()
        );
    }
    // An --audit file in the workspace, given relative and not there yet, is hidden too
    // (it is created first: otherwise the session would see the log appear).
    let o = env
        .cmd(
            &["--audit", "logs/audit.jsonl"],
            &[
                "/bin/sh",
                "-c",
                "wc -c < logs/audit.jsonl; echo FORGED >> logs/audit.jsonl 2>&1 || echo log-denied",
            ],
        )
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(stdout(&o).lines().next(), Some("0"), "{}", text(&o));
    assert!(stdout(&o).contains("log-denied"), "{}", text(&o));
    let log = std::fs::read_to_string(env.ws.join("logs/audit.jsonl")).unwrap();
    assert!(log.contains("\"action\":\"end\"") && !log.lines().any(|l| l == "FORGED"));
}

/// A policy file inside the writable workspace is read-only in the session and is not
/// reloaded live: otherwise the agent could widen its own policy (or the next
/// session's) by editing it, or by renaming its directory away and writing a new one.
fn a_policy_file_in_the_workspace_cannot_be_changed_or_reloaded(b: B) {
    let mut env = Env::new_for(b, BASE);
    let conf = env.ws.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let original = std::fs::read_to_string(&env.policy).unwrap();
    env.policy = conf.join("warden.toml");
    std::fs::write(&env.policy, &original).unwrap();
    let child = env
        .cmd(
            &[],
            &[
                "/bin/sh",
                "-c",
                "echo '[network]' >> conf/warden.toml 2>&1 || echo append-denied; \
                 sed -i 's/test/mine/' conf/warden.toml 2>&1 || echo sed-denied; \
                 mv conf/warden.toml conf/old 2>&1 || echo mv-denied; \
                 rm -f conf/warden.toml 2>&1 || echo rm-denied; \
                 mv conf conf2 2>&1 || echo dir-mv-denied; \
                 touch conf/notes && echo others-writable; sleep 3; exit 0",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A change the session did not make (here from the host) is not applied either.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let changed = format!("{original}# changed during the session\n");
    std::fs::write(&env.policy, &changed).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_code(&o, 0);
    let out = stdout(&o);
    for denied in [
        "append-denied",
        "sed-denied",
        "mv-denied",
        "rm-denied",
        "dir-mv-denied",
        "others-writable",
    ] {
        assert!(out.contains(denied), "{denied} missing: {}", text(&o));
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not reload it live"), "{}", text(&o));
    assert!(!err.contains("warden run: reloaded"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&env.policy).unwrap(), changed);
    assert!(!env.ws.join("conf2").exists());
}

/// Cedar rules the policy loads from inside the writable workspace are read-only in the
/// session: a rule the agent added or changed there would be in force in its next session
/// (or in this one at a reload). A file linked into the rules directory from elsewhere in
/// the workspace is covered too.
fn cedar_rules_in_the_workspace_cannot_be_added_or_changed(b: B) {
    let env = Env::new_for(
        b,
        &format!("{BASE}\n[cedar]\nfiles = [\"ws/rules/*.cedar\"]\n"),
    );
    let rules = env.ws.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let base = "forbid(principal, action == Warden::Action::\"connect\", resource == Warden::Host::\"example.org\");\n";
    std::fs::write(rules.join("base.cedar"), base).unwrap();
    std::fs::write(env.ws.join("shared.cedar"), "// shared\n").unwrap();
    std::os::unix::fs::symlink("../shared.cedar", rules.join("linked.cedar")).unwrap();
    let check = || {
        let o = Command::new(WARDEN)
            .args(["policy", "check"])
            .arg(&env.policy)
            .output()
            .unwrap();
        assert_code(&o, 0);
        stdout(&o)
    };
    let before = check();
    let permit_all = "permit(principal, action, resource);";
    let o = env.sh(&format!(
        "echo '{permit_all}' > rules/x.cedar 2>&1 || echo add-denied; \
         echo '{permit_all}' >> rules/base.cedar 2>&1 || echo change-denied; \
         echo '{permit_all}' >> shared.cedar 2>&1 || echo linked-denied; \
         rm -f rules/base.cedar 2>&1 || echo rm-denied; \
         mv rules rules.old 2>&1 || echo mv-denied; \
         touch notes && echo others-writable"
    ));
    assert_code(&o, 0);
    let out = stdout(&o);
    for denied in [
        "add-denied",
        "change-denied",
        "linked-denied",
        "rm-denied",
        "mv-denied",
        "others-writable",
    ] {
        assert!(out.contains(denied), "{denied} missing: {}", text(&o));
    }
    assert!(!rules.join("x.cedar").exists());
    assert_eq!(
        std::fs::read_to_string(rules.join("base.cedar")).unwrap(),
        base
    );
    assert_eq!(check(), before, "the policy changed: {}", text(&o));
}

/// A session of `env` does not start: `/bin/true` exits 125 and Warden's message holds
/// each of `says`.
fn refused(env: &Env, says: &[&str]) {
    let o = env.run(&["/bin/true"]);
    assert_code(&o, 125);
    let err = String::from_utf8_lossy(&o.stderr);
    for s in says {
        assert!(err.contains(s), "{s:?} missing: {}", text(&o));
    }
}

/// When the rules cannot be kept read-only without making a writable mount read-only
/// (a glob that looks in the workspace itself), or are reached through a link in the
/// workspace the agent could re-point, the session does not start.
fn cedar_rules_the_session_could_write_stop_the_session(b: B) {
    let env = Env::new_for(b, &format!("{BASE}\n[cedar]\nfiles = [\"ws/*.cedar\"]\n"));
    std::fs::write(env.ws.join("a.cedar"), "// rules\n").unwrap();
    refused(&env, &["[cedar] files", "a directory of their own"]);
    let env = Env::new_for(
        b,
        &format!("{BASE}\n[cedar]\nfiles = [\"ws/rules/*.cedar\"]\n"),
    );
    std::fs::create_dir_all(env.ws.join("real")).unwrap();
    std::fs::write(env.ws.join("real/a.cedar"), "// rules\n").unwrap();
    std::os::unix::fs::symlink("real", env.ws.join("rules")).unwrap();
    refused(&env, &["a link the session could re-point"]);
    // Rules outside the workspace, one of them a link into the workspace through a
    // second link there: the agent could re-point that one.
    let env = Env::new_for(
        b,
        &format!("{BASE}\n[cedar]\nfiles = [\"rules/*.cedar\"]\n"),
    );
    let rules = env.dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::create_dir_all(env.ws.join("real")).unwrap();
    std::fs::write(env.ws.join("real/y.cedar"), "// rules\n").unwrap();
    std::os::unix::fs::symlink("real", env.ws.join("link")).unwrap();
    std::os::unix::fs::symlink(env.ws.join("link/y.cedar"), rules.join("x.cedar")).unwrap();
    refused(&env, &["a link the session could re-point", "/ws/link"]);
}

/// A file Warden reads for a session (the policy, a `file:` credential, a `command:`
/// credential's script) named through a link in the writable workspace: the session
/// could point the link at a file of its choosing for the next start, so none starts.
fn files_warden_reads_through_a_link_in_the_workspace_stop_the_session(b: B) {
    // The policy itself: re-pointed to a file of the agent's, the next session would
    // run under it.
    let mut env = Env::new_for(b, BASE);
    let link = env.ws.join("warden.toml");
    std::os::unix::fs::symlink(&env.policy, &link).unwrap();
    env.policy = link;
    refused(&env, &["a link the session could re-point"]);
    for (file, mode, source) in [("token", 0o600, "file:"), ("token.sh", 0o755, "command:")] {
        let env = Env::new_for(b, BASE);
        let real = env.ws.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join(file), "#!/bin/sh\necho TOKEN-VALUE-123\n").unwrap();
        std::fs::set_permissions(real.join(file), std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::symlink("real", env.ws.join("current")).unwrap();
        bind_credential(
            &env,
            &format!("{source}{}", env.ws.join("current").join(file).display()),
        );
        refused(&env, &["a link the session could re-point"]);
    }
}

/// `warden` and `warden-init` inside the workspace (a build tree, as when Warden is run
/// from its own checkout) and the script a `command:` credential runs are read-only in
/// the session: replaced, the next start would run the agent's program on the host.
fn wardens_own_programs_in_the_workspace_cannot_be_replaced(b: B) {
    let env = Env::new_for(b, BASE);
    let tools = env.ws.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let script = "#!/bin/sh\necho TOKEN-VALUE-123\n";
    std::fs::write(tools.join("token.sh"), script).unwrap();
    std::fs::set_permissions(
        tools.join("token.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    bind_credential(
        &env,
        &format!("command:{}", tools.join("token.sh").display()),
    );
    let bin = env.ws.join("target/release");
    std::fs::create_dir_all(&bin).unwrap();
    for (src, name) in [(WARDEN, "warden"), (WARDEN_INIT, "warden-init")] {
        std::fs::copy(src, bin.join(name)).unwrap();
    }
    let before = std::fs::read(bin.join("warden-init")).unwrap();
    let mut cmd = Command::new(bin.join("warden"));
    cmd.arg("run").arg("--policy").arg(&env.policy);
    if b != B::Namespaces {
        cmd.args(["--backend", b.flag()]);
    }
    let o = cmd
        .args(["--", "/bin/sh", "-c"])
        .arg(
            "cp /bin/true target/release/warden-init 2>&1 || echo init-denied; \
             cat /bin/true > target/release/warden 2>&1 || echo exe-denied; \
             rm -f target/release/warden 2>&1 || echo rm-denied; \
             mv target/release target/old 2>&1 || echo dir-denied; \
             mv target t2 2>&1 || echo top-denied; \
             touch target/release/other && echo others-writable; \
             echo 'echo stolen' >> tools/token.sh 2>&1 || echo script-denied; exit 0",
        )
        .env("WARDEN_HOME", &env.warden_home)
        .env("HOME", &env.home)
        .current_dir(&env.ws)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&o, 0);
    let out = stdout(&o);
    for denied in [
        "init-denied",
        "exe-denied",
        "rm-denied",
        "dir-denied",
        "top-denied",
        "others-writable",
        "script-denied",
    ] {
        assert!(out.contains(denied), "{denied} missing: {}", text(&o));
    }
    assert_eq!(std::fs::read(bin.join("warden-init")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(tools.join("token.sh")).unwrap(),
        script
    );
    assert_eq!(
        std::fs::read(bin.join("warden")).unwrap(),
        std::fs::read(WARDEN).unwrap()
    );
}

fn symlink_out_of_the_workspace_dangles(b: B) {
    let env = Env::new_for(b, BASE);
    let outside = env.dir.path().join("outside-secret");
    std::fs::write(&outside, "OUTSIDE").unwrap();
    std::os::unix::fs::symlink(&outside, env.ws.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", env.ws.join("shadow")).unwrap();
    std::os::unix::fs::symlink("../outside-secret", env.ws.join("rel")).unwrap();
    let o = env.sh("cat link shadow rel 2>&1; ln -s / root; ls root/ | head -50");
    let out = stdout(&o);
    assert!(
        !out.contains("OUTSIDE") && !out.contains("root:"),
        "{}",
        text(&o)
    );
}

fn symlink_planted_in_a_mount_target_does_not_redirect_the_mount(b: B) {
    let env = Env::new_for(
        b,
        &format!(
            "{BASE}\n[[filesystem.mounts]]\nhost = \"DATA\"\npath = \"WS/evil/data\"\nmode = \"ro\"\n"
        ),
    );
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "data").unwrap();
    let victim = env.dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, env.ws.join("evil")).unwrap();
    let p = std::fs::read_to_string(&env.policy).unwrap();
    std::fs::write(
        &env.policy,
        p.replace("DATA", &data.to_string_lossy())
            .replace("WS", &env.ws.to_string_lossy()),
    )
    .unwrap();
    let o = env.sh("ls /; cat evil/data/f");
    // Setup refuses the target (exit 125) rather than following the symlink.
    assert_code(&o, 125);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "something was created through the symlink"
    );
}

fn hard_link_to_an_outside_file_fails(b: B) {
    let env = Env::new_for(b, BASE);
    let o = env.sh("ln /etc/passwd hl 2>&1; ln /usr/bin/env hl2 2>&1; ls hl hl2 2>&1; exit 0");
    let out = stdout(&o);
    assert!(
        out.contains("Invalid cross-device link") || out.contains("cross-device"),
        "{}",
        text(&o)
    );
    assert!(!env.ws.join("hl").exists() && !env.ws.join("hl2").exists());
}

fn etc_holds_no_secrets(b: B) {
    let env = Env::new_for(b, BASE);
    let o = env.sh(
        "for f in /etc/shadow /etc/gshadow /etc/sudoers /etc/ssl/private /etc/ssh; do test -e $f && echo PRESENT $f; done; \
         cut -d: -f1,3 /etc/passwd; test -r /etc/ssl/certs/ca-certificates.crt && echo certs-ok",
    );
    let out = stdout(&o);
    assert!(!out.contains("PRESENT"), "{}", text(&o));
    assert!(
        out.contains("certs-ok") && out.contains("root:0"),
        "{}",
        text(&o)
    );
    assert!(
        out.lines().filter(|l| l.contains(':')).count() <= 3,
        "passwd has more than root, user, nobody: {out}"
    );
}

fn cannot_write_system_dirs_or_root(b: B) {
    let env = Env::new_for(b, BASE);
    let o = env.sh("for p in /usr/x /etc/x /x /bin/x /dev/x /proc/sys/kernel/hostname; do (echo 1 > $p) 2>/dev/null && echo WROTE $p; done; exit 0");
    let out = stdout(&o);
    let wrote: Vec<&str> = out.lines().filter(|l| l.starts_with("WROTE")).collect();
    match b {
        B::Namespaces => assert!(wrote.is_empty(), "{}", text(&o)),
        // gVisor's /dev is a tmpfs in the sandbox's memory (this runsc refuses device
        // nodes on a read-only /dev): a file can be created there, seen by nobody else
        // and gone with the session. Everything else stays read-only.
        B::Gvisor => assert!(
            wrote == ["WROTE /dev/x"] || wrote.is_empty(),
            "{}",
            text(&o)
        ),
    }
    assert!(!std::path::Path::new("/dev/x").exists());
}

// ---- host processes ---------------------------------------------------------------------

fn proc_shows_only_the_session(b: B) {
    let env = Env::new_for(b, BASE);
    let mut host = HostChild::sleep();
    let pid = host.pid();
    let o = env.sh(&format!(
        "for p in /proc/[0-9]*; do printf '%s ' ${{p#/proc/}}; done; echo; test -e /proc/{pid} && echo SEES-HOST; kill -0 {pid} 2>/dev/null && echo SIGNALLED; \
         kill -9 -1 2>/dev/null; echo survived"
    ));
    let out = stdout(&o);
    assert!(
        !out.contains("SEES-HOST") && !out.contains("SIGNALLED"),
        "{}",
        text(&o)
    );
    let pids: Vec<u32> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        pids.len() <= 6 && pids.contains(&1),
        "session sees pids {pids:?}"
    );
    assert!(
        host.alive(),
        "the host process was killed from inside the session"
    );
}

fn ptrace_and_process_vm_readv_fail(b: B) {
    let env = Env::new_for(b, BASE);
    let host = HostChild::sleep();
    let pid = host.pid().to_string();
    attack(&env, "ptrace", Some(&pid));
    attack(&env, "ptrace", Some("1"));
    attack(&env, "ptrace_child", None);
    attack(&env, "vm_readv", Some("1"));
    attack(&env, "kill", Some(&pid));
}

/// The session's init (PID 1, root of the session's user namespace with every
/// capability in it: it could unmount the covers over `filesystem.deny` paths) cannot be
/// taken over from the agent: its memory, environment, root and descriptors stay closed
/// through `/proc/1` (the kernel refuses a tracer whose capabilities are not a superset
/// of the target's, Landlock and seccomp aside), and it ignores signals from its own
/// namespace. As root and as an unprivileged user.
fn the_sessions_init_cannot_be_taken_over_through_proc(b: B) {
    if b == B::Gvisor {
        return; // PID 1 under gVisor is the sandbox's own first process, not Warden's init
    }
    const PROBE: &str = "import os, signal\n\
        for path, mode in [('mem', 'r+b'), ('mem', 'rb'), ('environ', 'rb'), ('maps', 'rb'), ('fd/0', 'rb')]:\n\
        \x20   try:\n\
        \x20       with open('/proc/1/' + path, mode) as f: f.read(1)\n\
        \x20       print('OPENED', path, mode)\n\
        \x20   except OSError as e: print('refused', path, e.errno)\n\
        for link in ['root', 'cwd', 'exe']:\n\
        \x20   try: print('LINK', link, os.readlink('/proc/1/' + link))\n\
        \x20   except OSError as e: print('refused', link, e.errno)\n\
        for sig in [signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM]:\n\
        \x20   try: os.kill(1, sig)\n\
        \x20   except OSError as e: print('refused', sig, e.errno)\n\
        print('init alive:', os.path.exists('/proc/1/status') and 'State:\\tS' in open('/proc/1/status').read())";
    let mut envs = vec![Env::new_for(b, BASE)];
    if is_root() {
        envs.push(Env::unprivileged_for(b, BASE));
    }
    for env in envs {
        let o = env.run(&["python3", "-c", PROBE]);
        assert_code(&o, 0);
        let out = stdout(&o);
        assert!(
            !out.contains("OPENED") && !out.contains("LINK"),
            "the session read its init through /proc/1: {}",
            text(&o)
        );
        for what in ["mem", "environ", "maps", "fd/0", "root", "cwd", "exe"] {
            assert!(
                out.contains(&format!("refused {what} ")),
                "{what}: {}",
                text(&o)
            );
        }
        assert!(out.contains("init alive: True"), "{}", text(&o));
    }
}

// ---- unix sockets -----------------------------------------------------------------------

const PY_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1]); s.sendall(b"hi"); print("CONNECTED", s.recv(16))
except OSError as e:
    print("refused", e)
"#;

fn host_unix_socket_in_the_workspace_is_unreachable_but_session_sockets_work(b: B) {
    let env = Env::new_for(b, BASE);
    let sock = env.ws.join("host.sock");
    let mut listener = HostChild(
        Command::new("python3")
            .arg("-c")
            .arg("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1]); s.listen(8); print('ready', flush=True)\nwhile True:\n  c,_=s.accept(); c.sendall(b'HOST-DAEMON'); c.close()")
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(listener.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"));
    std::fs::write(env.ws.join("client.py"), PY_CLIENT).unwrap();
    std::fs::write(
        env.ws.join("own.py"),
        "import socket, os, threading\np='/tmp/own.sock'\ns=socket.socket(socket.AF_UNIX); s.bind(p); s.listen(1)\n\
         def srv():\n  c,_=s.accept(); c.sendall(b'SESSION-OK'); c.close()\nthreading.Thread(target=srv).start()\n\
         c=socket.socket(socket.AF_UNIX); c.connect(p); print(c.recv(16).decode())\n\
         q='own2.sock'\nt=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); t.bind(q)\nu=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); u.sendto(b'DGRAM-OK', q); print(t.recv(16).decode())\n",
    )
    .unwrap();
    let o = env.sh("python3 client.py host.sock; python3 own.py");
    let out = stdout(&o);
    assert!(
        !out.contains("HOST-DAEMON") && !out.contains("CONNECTED"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("SESSION-OK") && out.contains("DGRAM-OK"),
        "{}",
        text(&o)
    );
}

fn host_abstract_socket_is_unreachable(b: B) {
    let env = Env::new_for(b, BASE);
    let name = format!("warden-test-{}", std::process::id());
    let mut listener = HostChild(
        Command::new("python3")
            .arg("-c")
            .arg("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0'+sys.argv[1]); s.listen(8); print('ready', flush=True)\nwhile True:\n  c,_=s.accept(); c.sendall(b'HOST-DAEMON'); c.close()")
            .arg(&name)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(listener.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::fs::write(env.ws.join("client.py"), PY_CLIENT).unwrap();
    let client = PY_CLIENT.replace("sys.argv[1]", &format!("'\\0{name}'"));
    let o = env.run(&["python3", "-c", &client]);
    assert!(
        stdout(&o).contains("refused") && !stdout(&o).contains("HOST-DAEMON"),
        "{}",
        text(&o)
    );
}

// ---- harness escapes ---------------------------------------------------------------------

fn git(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap()
}

/// What the agent writes into `.git` runs on the host the next time the user's git (or
/// their shell prompt) runs there: hooks, `core.fsmonitor`, a replaced `.git`, a
/// husky-style `core.hooksPath` directory. None of it may be planted; committing must
/// keep working.
fn git_hooks_and_config_cannot_be_planted_for_the_host(b: B) {
    let env = Env::new_for(b, BASE);
    assert!(git(&env.ws, &["init", "-q"]).status.success());
    std::fs::create_dir_all(env.ws.join(".husky")).unwrap();
    std::fs::write(env.ws.join(".husky/pre-commit"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(env.ws.join("a.txt"), "a\n").unwrap();
    assert!(
        git(&env.ws, &["config", "core.hooksPath", ".husky"])
            .status
            .success()
    );
    assert!(git(&env.ws, &["add", "-A"]).status.success());
    assert!(git(&env.ws, &["commit", "-qm", "host"]).status.success());
    // A second repository two levels down (a workspace holding clones).
    let inner = env.ws.join("libs/inner");
    std::fs::create_dir_all(&inner).unwrap();
    assert!(git(&inner, &["init", "-q"]).status.success());
    let config_before = std::fs::read_to_string(env.ws.join(".git/config")).unwrap();
    let o = env.sh(
        "export GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@a GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@a; \
         printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > .git/hooks/post-checkout 2>&1 || echo hook-denied; \
         rm -rf .git/hooks 2>&1 || echo rmhooks-denied; \
         git config core.fsmonitor 'touch /tmp/pwned' 2>&1 || echo config-denied; \
         echo 'echo pwned' >> .husky/pre-commit 2>&1 || echo husky-denied; \
         mv .git .git-old 2>&1 || echo mv-denied; \
         echo x > libs/inner/.git/hooks/pre-commit 2>&1 || echo inner-hook-denied; \
         echo b >> a.txt && git commit -qam agent && echo committed",
    );
    let out = stdout(&o);
    for word in [
        "hook-denied",
        "rmhooks-denied",
        "config-denied",
        "husky-denied",
        "mv-denied",
        "inner-hook-denied",
        "committed",
    ] {
        assert!(out.contains(word), "{word}: {}", text(&o));
    }
    // On the host: the agent's commit is there, nothing it planted is.
    let log = git(&env.ws, &["log", "--format=%s"]);
    assert_eq!(String::from_utf8_lossy(&log.stdout), "agent\nhost\n");
    assert_eq!(
        std::fs::read_to_string(env.ws.join(".git/config")).unwrap(),
        config_before
    );
    assert!(!env.ws.join(".git/hooks/post-checkout").exists());
    assert_eq!(
        std::fs::read_to_string(env.ws.join(".husky/pre-commit")).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    assert!(env.ws.join(".git/HEAD").exists() && !env.ws.join(".git-old").exists());
}

/// `commondir` (and `config.worktree`) do not exist in a git directory, so nothing can
/// be laid over them: planted, they would point the host's git at a configuration the
/// agent wrote (`core.fsmonitor` runs on the next `git status`). The first one to
/// appear is removed and ends the session; the repository on the host is as it was.
fn git_redirect_files_planted_end_the_session(b: B) {
    let env = Env::new_for(b, BASE);
    assert!(git(&env.ws, &["init", "-q"]).status.success());
    let inner = env.ws.join("libs/inner");
    std::fs::create_dir_all(&inner).unwrap();
    assert!(git(&inner, &["init", "-q"]).status.success());
    let pwned = env.dir.path().join("pwned");
    let o = env.sh(&format!(
        "mkdir -p evil/hooks evil/objects evil/refs/heads && printf '[core]\\n\\tfsmonitor = \"touch {pwned}\"\\n' > evil/config; \
         echo started; \
         printf '../evil\\n' > libs/inner/.git/commondir.tmp && mv libs/inner/.git/commondir.tmp libs/inner/.git/commondir; \
         sleep 5; echo survived",
        pwned = pwned.display()
    ));
    let out = stdout(&o);
    assert!(out.contains("started"), "{}", text(&o));
    assert!(
        !out.contains("survived"),
        "the session went on: {}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("libs/inner/.git/commondir"),
        "{}",
        text(&o)
    );
    assert!(!inner.join(".git/commondir").exists());
    // The host's git in that repository still reads its own configuration.
    let st = git(&inner, &["status", "--short"]);
    assert!(st.status.success(), "{st:?}");
    assert!(!pwned.exists(), "the planted fsmonitor ran");
    let events = env.audit_events();
    let plant = events
        .iter()
        .find(|e| e["action"] == "git_plant")
        .expect("no git_plant event");
    assert_eq!(plant["decision"], "deny", "{plant}");
    assert!(
        plant["target"]
            .as_str()
            .unwrap()
            .ends_with("libs/inner/.git/commondir"),
        "{plant}"
    );
}

/// What the guard cannot cover — a repository the agent creates, one deeper than two
/// levels — is reported once the session has ended: which git configuration and hooks
/// it wrote, on stderr and as a `git_unguarded` deny that was not enforced. Guarded and
/// untouched repositories are not reported.
fn git_written_in_unguarded_repositories_is_reported(b: B) {
    let env = Env::new_for(b, BASE);
    assert!(git(&env.ws, &["init", "-q"]).status.success());
    let deep = env.ws.join("a/b/c/deep");
    let quiet = env.ws.join("x/y/z/quiet");
    for r in [&deep, &quiet] {
        std::fs::create_dir_all(r).unwrap();
        assert!(git(r, &["init", "-q"]).status.success());
    }
    // Well past the setup's change times (the report allows 20 ms of clock lag).
    std::thread::sleep(std::time::Duration::from_millis(100));
    let o = env.sh(
        "git init -q newrepo && git -C newrepo config core.fsmonitor 'touch /tmp/x' && \
         printf '#!/bin/sh\\n' > a/b/c/deep/.git/hooks/post-checkout && \
         chmod +x a/b/c/deep/.git/hooks/post-checkout && \
         { git config core.fsmonitor x 2>/dev/null || true; } && echo done",
    );
    assert!(stdout(&o).contains("done"), "{}", text(&o));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let newrepo = env.ws.join("newrepo");
    for (repo, what) in [
        (&newrepo, ".git/config"),
        (&deep, ".git/hooks/post-checkout"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("in {} (", repo.display())))
            .unwrap_or_else(|| panic!("{} not reported: {err}", repo.display()));
        assert!(line.contains(what), "{line}");
    }
    assert!(!err.contains("quiet"), "{err}");
    assert!(
        !err.contains(&format!("in {} (", env.ws.display())),
        "{err}"
    );
    let events = env.audit_events();
    let mut reported: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "git_unguarded")
        .inspect(|e| {
            assert_eq!(e["decision"], "deny", "{e}");
            assert_eq!(e["enforced"], false, "{e}");
        })
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    reported.sort();
    let mut want = vec![deep.display().to_string(), newrepo.display().to_string()];
    want.sort();
    assert_eq!(reported, want);
}

/// A policy that mounts a repository's `.git` writable itself opts it out of the guard.
fn a_policy_mounting_git_writable_opts_out_of_the_git_guard(b: B) {
    let env = Env::new_for(b, BASE);
    // The workspace's path is known only now: write the policy naming its `.git`.
    let git_dir = env.ws.join(".git");
    std::fs::write(
        &env.policy,
        format!(
            "version = 1\nname = \"test\"\n{BASE}\n[[filesystem.mounts]]\nhost = \"{}\"\nmode = \"rw\"\n",
            git_dir.display()
        ),
    )
    .unwrap();
    assert!(git(&env.ws, &["init", "-q"]).status.success());
    let o = env.sh("git config remote.origin.url https://example.invalid/r && echo cfg-ok");
    assert!(stdout(&o).contains("cfg-ok"), "{}", text(&o));
    let cfg = std::fs::read_to_string(git_dir.join("config")).unwrap();
    assert!(cfg.contains("https://example.invalid/r"), "{cfg}");
}

// ---- kernel surface ---------------------------------------------------------------------

fn dangerous_syscalls_fail(b: B) {
    let env = Env::new_for(b, BASE);
    for a in [
        "io_uring",
        "keyctl",
        "add_key",
        "bpf",
        "perf",
        "userfaultfd",
        "mount",
        "umount",
        "unshare_user",
        "unshare_net",
        "clone_newuser",
        "clone3",
        "clone3_newuser",
        "af_packet",
        "af_vsock",
        "netlink_audit",
        "netlink_diag",
        "netlink_uevent",
        "setns",
        "personality",
        "x32",
    ] {
        attack(&env, a, None);
    }
    // What must keep working.
    attack(&env, "fork", None);
    attack(&env, "netlink_route", None);
    // glibc's pthread_create tries clone3 first and falls back to clone only on ENOSYS:
    // threads must keep working where clone3 is refused.
    let o = env.sh("python3 -c 'import threading; t = threading.Thread(target=print, args=(\"thread-ok\",)); t.start(); t.join()'");
    assert!(stdout(&o).contains("thread-ok"), "{}", text(&o));
}

fn i386_entry_point_kills_the_process(b: B) {
    let env = Env::new_for(b, BASE);
    if env.attack_bin().is_none() {
        return;
    }
    let o = env.run(&["./attack", "int80"]);
    match b {
        B::Namespaces => {
            // SIGSYS (31) from SECCOMP_RET_KILL_PROCESS: 128 + 31.
            assert_code(&o, 159);
            assert!(!stdout(&o).contains("SUCCEEDED"), "{}", text(&o));
        }
        B::Gvisor => {
            // gVisor has no i386 entry point: the instruction traps to the sentry, which
            // serves it as the 64-bit call of that number (20, writev, on a bad
            // descriptor here). The process is not killed, but nothing reached the host
            // kernel's 32-bit system call table, and 32-bit getpid did not run.
            assert_code(&o, 1);
            assert!(stdout(&o).contains("int80 SUCCEEDED (-"), "{}", text(&o));
        }
    }
}

fn tiocsti_fails(b: B) {
    let env = Env::new_for(b, BASE);
    attack(&env, "tiocsti", None);
    attack(&env, "tioclinux", None);
}

fn inherited_descriptors_are_closed(b: B) {
    let env = Env::new_for(b, BASE);
    let secret = env.dir.path().join("fd-secret");
    std::fs::write(&secret, "FD-SECRET").unwrap();
    // The shell opens fd 7 (no close-on-exec) and execs warden with it.
    let inner = env.cmd(
        &[],
        &[
            "/bin/sh",
            "-c",
            "ls /proc/self/fd; cat <&7 2>&1; cat /proc/self/fd/7 2>&1; exit 0",
        ],
    );
    let prog = inner.get_program().to_owned();
    let args: Vec<_> = inner.get_args().map(|a| a.to_owned()).collect();
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("exec 7<\"$0\"; exec \"$@\"")
        .arg(&secret)
        .arg(prog)
        .args(args);
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.current_dir(&env.ws);
    let o = c.output().unwrap();
    let out = stdout(&o);
    assert!(!out.contains("FD-SECRET"), "{}", text(&o));
    assert!(!out.lines().any(|l| l.trim() == "7"), "{}", text(&o));
}

fn cgroup_files_are_not_writable(b: B) {
    let env = Env::new_for(b, &format!("{BASE}\n[limits]\npids = 200\n"));
    if !is_root() {
        return;
    }
    let o = env.sh(
        "ls /sys/fs/cgroup 2>&1 | head -3; for f in /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cgroup.procs; do (echo max > $f) 2>/dev/null && echo WROTE $f; done; cat /proc/self/cgroup; exit 0",
    );
    let out = stdout(&o);
    assert!(!out.contains("WROTE"), "{}", text(&o));
    assert!(
        !out.contains("warden-"),
        "the cgroup namespace should hide the session's cgroup path: {out}"
    );
}

// ---- limits -----------------------------------------------------------------------------

fn session_cgroups_gone(env: &Env) {
    let ev = env.audit_events();
    let Some(id) = ev
        .iter()
        .find(|e| e["action"] == "start")
        .and_then(|e| e["session"].as_str())
    else {
        panic!("no session start in the audit log: {ev:?}")
    };
    let name = format!("warden-{id}");
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "4", "-name", &name])
        .output()
        .unwrap();
    assert!(
        stdout(&out).trim().is_empty(),
        "cgroup left behind: {}",
        stdout(&out)
    );
}

fn fork_bomb_is_contained_by_the_pids_limit(b: B) {
    if !is_root() {
        return;
    }
    let env = Env::new_for(b, &format!("{BASE}\n[limits]\npids = 40\n"));
    std::fs::write(
        env.ws.join("bomb.py"),
        "import os, time\nok = 0\nfor i in range(300):\n    try:\n        pid = os.fork()\n    except OSError:\n        continue\n    if pid == 0:\n        time.sleep(30); os._exit(0)\n    ok += 1\nprint('forked', ok, flush=True)\n",
    )
    .unwrap();
    let o = env.run(&["python3", "bomb.py"]);
    let n: Option<u32> = stdout(&o)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok());
    match b {
        B::Namespaces => {
            assert_code(&o, 0);
            let n = n.unwrap_or(999);
            assert!(n < 40, "forked {n} processes under pids = 40: {}", text(&o));
        }
        B::Gvisor => {
            // The limit holds the whole sandbox: gVisor's own threads and stub processes
            // count against it, so the bomb does not get its 40 and the sandbox itself
            // may be what hits the wall (runsc then fails and the session ends non-zero).
            assert!(
                n.is_some_and(|n| n < 40) || o.status.code() != Some(0),
                "forked {n:?} processes under pids = 40: {}",
                text(&o)
            );
        }
    }
    session_cgroups_gone(&env);
}

fn allocation_over_the_memory_limit_is_killed(b: B) {
    if !is_root() {
        return;
    }
    let env = Env::new_for(b, &format!("{BASE}\n[limits]\nmemory = \"64MiB\"\n"));
    let o = env.run(&[
        "python3",
        "-c",
        "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('ALLOCATED')",
    ]);
    assert!(!stdout(&o).contains("ALLOCATED"), "{}", text(&o));
    assert_code(&o, 137);
    session_cgroups_gone(&env);
}

// ---- network ----------------------------------------------------------------------------

fn nothing_leaves_without_a_rule_but_loopback_works(b: B) {
    // No network rule at all: raw IPs reach nothing (the session's TUN stack may accept
    // the handshake, but the flow is closed before a byte moves and nothing is dialled),
    // names do not resolve, and the session's own loopback works.
    let env = Env::new_for(b, BASE);
    std::fs::write(
        env.ws.join("net.py"),
        "import socket, threading\n\
         for host in [('1.1.1.1', 53), ('8.8.8.8', 443)]:\n  s = socket.socket(); s.settimeout(5)\n  try:\n    s.connect(host); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    d = s.recv(100)\n    print('GOT-DATA' if d else 'closed', host)\n  except OSError as e:\n    print('blocked', e)\n\
         try:\n  socket.getaddrinfo('example.com', 443); print('RESOLVED')\nexcept OSError as e:\n  print('dns blocked', e)\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n\
         threading.Thread(target=lambda: l.accept()[0].sendall(b'LOOP-OK')).start()\n\
         c = socket.create_connection(l.getsockname()); print(c.recv(8).decode())\n",
    )
    .unwrap();
    let o = env.run(&["python3", "net.py"]);
    let out = stdout(&o);
    assert!(
        !out.contains("GOT-DATA") && !out.contains("RESOLVED"),
        "{}",
        text(&o)
    );
    assert!(out.contains("LOOP-OK"), "{}", text(&o));
    // Each attempt is a recorded deny.
    let events = env.audit_events();
    for ip in ["1.1.1.1", "8.8.8.8", "example.com"] {
        assert!(
            events.iter().any(|e| e["surface"] == "network"
                && e["decision"] == "deny"
                && e["target"].as_str().unwrap_or("").contains(ip)),
            "no deny recorded for {ip}: {events:#?}"
        );
    }
    // The only interfaces are loopback and Warden's TUN device.
    let o = env.sh("cat /proc/net/dev");
    let ifaces: Vec<String> = stdout(&o)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    assert_eq!(ifaces.len(), 2, "{}", text(&o));
    assert!(
        ifaces.contains(&"lo".to_string()) && ifaces.contains(&"warden0".to_string()),
        "{}",
        text(&o)
    );
}

fn no_capabilities_and_no_new_privs(b: B) {
    let env = Env::new_for(b, BASE);
    // no_new_privs through prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc/PID/status has
    // no NoNewPrivs line.
    let o = env.sh(
        "grep -E '^(Cap|Seccomp)' /proc/self/status; \
         python3 -c 'import ctypes; print(\"NoNewPrivs:\", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'",
    );
    let out = stdout(&o);
    for l in out.lines() {
        if l.starts_with("Cap") {
            assert!(l.ends_with("0000000000000000"), "{out}");
        }
    }
    assert!(
        out.contains("NoNewPrivs: 1") && out.contains("Seccomp:\t2"),
        "{out}"
    );
}

// ---- unprivileged user ------------------------------------------------------------------

fn unprivileged_user_core_attacks(b: B) {
    if !is_root() {
        return; // the test switches to uid 65534 itself, which needs root
    }
    let env = Env::unprivileged_for(b, BASE);
    std::fs::write(env.ws.join(".env"), "TOP-SECRET").unwrap();
    std::fs::write(env.home.join("secret.txt"), "HOME-SECRET").unwrap();
    let host = HostChild::sleep();
    let o = env.sh(&format!(
        "id -u; cat .env {h}/secret.txt /etc/shadow 2>&1; test -e /proc/{pid} && echo SEES-HOST; ls /proc | grep -cE '^[0-9]+$'; touch ok-file && echo wrote-ws",
        h = env.home.display(),
        pid = host.pid()
    ));
    assert_code(&o, 0);
    let out = stdout(&o);
    // Under gVisor the caller's uid is root inside (runsc runs only as root, in a user
    // namespace where that uid is root), without any capability.
    let uid = if b == B::Gvisor { "0\n" } else { "65534\n" };
    assert!(out.starts_with(uid), "{}", text(&o));
    assert!(
        !out.contains("SECRET") && !out.contains("SEES-HOST") && !out.contains("root:"),
        "{}",
        text(&o)
    );
    assert!(out.contains("wrote-ws"), "{}", text(&o));
    let Some(bin) = env.attack_bin() else { return };
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for a in [
        "io_uring",
        "keyctl",
        "bpf",
        "unshare_user",
        "af_packet",
        "mount",
        "x32",
        "ptrace_child",
    ] {
        let o = env.run(&["./attack", a]);
        assert_code(&o, 0);
    }
    let o = env.run(&[
        "python3",
        "-c",
        "import socket; s=socket.socket(); s.settimeout(2); s.connect(('1.1.1.1', 53))",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
}

fn unprivileged_user_with_limits_and_no_delegation_fails_closed(b: B) {
    if !is_root() {
        return;
    }
    let env = Env::unprivileged_for(b, &format!("{BASE}\n[limits]\npids = 100\n"));
    let o = env.run(&["/bin/true"]);
    assert_code(&o, 125);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Delegate"),
        "{}",
        text(&o)
    );
}

crate::per_backend!(
    host_home_is_invisible,
    deny_patterns_hide_files_inside_the_workspace,
    deny_pattern_hides_a_directory_and_a_home_path_inside_a_mount,
    a_mount_the_policy_denies_is_not_mounted_and_is_recorded,
    wardens_own_state_in_the_workspace_is_hidden,
    a_policy_file_in_the_workspace_cannot_be_changed_or_reloaded,
    wardens_own_programs_in_the_workspace_cannot_be_replaced,
    cedar_rules_in_the_workspace_cannot_be_added_or_changed,
    cedar_rules_the_session_could_write_stop_the_session,
    files_warden_reads_through_a_link_in_the_workspace_stop_the_session,
    symlink_out_of_the_workspace_dangles,
    symlink_planted_in_a_mount_target_does_not_redirect_the_mount,
    hard_link_to_an_outside_file_fails,
    etc_holds_no_secrets,
    cannot_write_system_dirs_or_root,
    proc_shows_only_the_session,
    ptrace_and_process_vm_readv_fail,
    the_sessions_init_cannot_be_taken_over_through_proc,
    host_unix_socket_in_the_workspace_is_unreachable_but_session_sockets_work,
    host_abstract_socket_is_unreachable,
    dangerous_syscalls_fail,
    git_hooks_and_config_cannot_be_planted_for_the_host,
    git_redirect_files_planted_end_the_session,
    git_written_in_unguarded_repositories_is_reported,
    a_policy_mounting_git_writable_opts_out_of_the_git_guard,
    i386_entry_point_kills_the_process,
    tiocsti_fails,
    inherited_descriptors_are_closed,
    cgroup_files_are_not_writable,
    fork_bomb_is_contained_by_the_pids_limit,
    allocation_over_the_memory_limit_is_killed,
    nothing_leaves_without_a_rule_but_loopback_works,
    no_capabilities_and_no_new_privs,
    unprivileged_user_core_attacks,
    unprivileged_user_with_limits_and_no_delegation_fails_closed,
);

/// From where a process that escaped gVisor would stand (runsc's own user and mount
/// namespaces), the session root's mounts cannot be taken apart: runsc runs in a user
/// namespace nested in the session's, so the overmounts hiding `filesystem.deny` paths
/// and the read-only root are locked to what they cover. (Without the nested namespace
/// the `umount` below succeeds: runsc would hold every capability of the namespace that
/// owns those mounts.)
#[test]
fn gvisor_runsc_cannot_unmount_a_hiding_overmount() {
    if !is_root() || !gvisor_available() {
        return;
    }
    let env = Env::new_for(B::Gvisor, BASE);
    std::fs::write(env.ws.join(".env"), "TOP-SECRET").unwrap();
    let mut child = env
        .cmd(&[], &["sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let warden = child.id();
    let _guard = Kill(std::mem::replace(
        &mut child,
        Command::new("true").spawn().unwrap(),
    ));
    let _ = child.wait();
    // The `runsc ... run` process among the session's processes.
    let runsc = (0..200)
        .find_map(|_| {
            let found = descendants(warden).into_iter().find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("runsc") && c.split('\0').any(|a| a == "run")
                    })
                    .unwrap_or(false)
            });
            if found.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            found
        })
        .expect("no runsc process in the session");
    let mountinfo = std::fs::read_to_string(format!("/proc/{runsc}/mountinfo")).unwrap();
    let hidden = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|m| m.ends_with("/.env"))
        .unwrap_or_else(|| panic!("no overmount on .env in runsc's namespace:\n{mountinfo}"))
        .to_string();
    // umount2(MNT_DETACH) from runsc's user and mount namespaces and its root (the
    // session root). A direct system call: umount(8) needs a /proc of its own PID
    // namespace, which the session's /proc is not.
    const UMOUNT: &str = "import ctypes, os, sys\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        r = libc.umount2(sys.argv[1].encode(), 2)\n\
        print('unmounted' if r == 0 else 'refused: ' + os.strerror(ctypes.get_errno()))";
    for target in [hidden.as_str(), "/"] {
        let pid = runsc.to_string();
        let o = Command::new("nsenter")
            .args([
                "-t", &pid, "-U", "-m", "-r", "-w", "--", "python3", "-c", UMOUNT, target,
            ])
            .output()
            .unwrap();
        assert!(
            stdout(&o).contains("refused: Invalid argument"),
            "umount {target} in runsc's namespaces: {}",
            text(&o)
        );
    }
    let after = std::fs::read_to_string(format!("/proc/{runsc}/mountinfo")).unwrap();
    assert!(
        after
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(hidden.as_str())),
        "the overmount on {hidden} is gone:\n{after}"
    );
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        parent_of.push((p, ppid));
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out.remove(0);
    out
}
