//! The agent's seccomp filter, as data: which system calls fail with `EPERM` (SPEC §7.4),
//! compiled by `seccompiler`, behind a short hand-written prefix that `seccompiler` cannot
//! express:
//!
//! 1. a foreign architecture (the i386 `int 0x80` entry, `AUDIT_ARCH_I386`) kills the
//!    process;
//! 2. an x32 system call (number with bit `0x40000000`, same `AUDIT_ARCH_X86_64`) fails with
//!    `EPERM` — a deny-list keyed on x86_64 numbers would otherwise let every x32 alias
//!    through;
//! 3. `clone3` fails with `ENOSYS` — its flags live in memory that BPF cannot read, and
//!    `ENOSYS` makes libc fall back to `clone`, whose flags the filter checks.
//!
//! Decision on `ptrace`: denied entirely, also inside the session (debuggers and `strace`
//! do not work in a session). The PID namespace already hides every outside process, but a
//! blanket deny is simpler to reason about and costs agents nothing they need.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::io;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const SECCOMP_DATA_ARG0: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// System calls denied outright.
fn denied_always() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
        libc::SYS_acct,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_vhangup,
        libc::SYS_pidfd_getfd,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_umount2,
    ]);
    v.sort_unstable();
    v.dedup();
    v
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> io::Result<Cond> {
    Cond::new(arg, len, op, value).map_err(io::Error::other)
}

fn rule(conds: Vec<Cond>) -> io::Result<SeccompRule> {
    SeccompRule::new(conds).map_err(io::Error::other)
}

fn rules() -> io::Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in denied_always() {
        m.insert(nr, Vec::new());
    }
    // clone/unshare with any namespace flag.
    let mut clone_rules = Vec::new();
    let mut unshare_rules = Vec::new();
    for &f in CLONE_NEW_FLAGS {
        clone_rules.push(rule(vec![cond(0, Len::Qword, Op::MaskedEq(f), f)?])?);
        unshare_rules.push(rule(vec![cond(0, Len::Dword, Op::MaskedEq(f), f)?])?);
    }
    m.insert(libc::SYS_clone, clone_rules);
    m.insert(libc::SYS_unshare, unshare_rules);
    // socket(): only AF_UNIX, AF_INET, AF_INET6, and AF_NETLINK with NETLINK_ROUTE.
    let af = |d: i32| d as u64;
    m.insert(
        libc::SYS_socket,
        vec![
            rule(vec![cond(0, Len::Dword, Op::Eq, 0)?])?,
            rule(vec![
                cond(0, Len::Dword, Op::Ge, af(libc::AF_INET) + 1)?,
                cond(0, Len::Dword, Op::Lt, af(libc::AF_INET6))?,
            ])?,
            rule(vec![
                cond(0, Len::Dword, Op::Gt, af(libc::AF_INET6))?,
                cond(0, Len::Dword, Op::Lt, af(libc::AF_NETLINK))?,
            ])?,
            rule(vec![cond(0, Len::Dword, Op::Gt, af(libc::AF_NETLINK))?])?,
            rule(vec![
                cond(0, Len::Dword, Op::Eq, af(libc::AF_NETLINK))?,
                cond(2, Len::Dword, Op::Ne, libc::NETLINK_ROUTE as u64)?,
            ])?,
        ],
    );
    // socketpair() is only meaningful for AF_UNIX.
    m.insert(
        libc::SYS_socketpair,
        vec![rule(vec![cond(0, Len::Dword, Op::Ne, af(libc::AF_UNIX))?])?],
    );
    // Terminal injection.
    m.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCLINUX)?])?,
        ],
    );
    // personality(): only the default, a query, and ADDR_NO_RANDOMIZE.
    m.insert(
        libc::SYS_personality,
        vec![rule(vec![
            cond(0, Len::Dword, Op::Ne, 0)?,
            cond(0, Len::Dword, Op::Ne, 0x0040000)?,
            cond(0, Len::Dword, Op::Ne, 0xffff_ffff)?,
        ])?],
    );
    Ok(m)
}

/// The complete filter program for the agent.
pub(crate) fn agent_program() -> io::Result<Vec<libc::sock_filter>> {
    let filter = SeccompFilter::new(
        rules()?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TARGET,
    )
    .map_err(io::Error::other)?;
    let compiled: BpfProgram = filter.try_into().map_err(io::Error::other)?;
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        prog.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32));
    }
    prog.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    prog.extend(compiled.into_iter().map(|i| libc::sock_filter {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }));
    Ok(prog)
}

/// The unix-socket guard: the calls that can name a Unix socket of the host go to the
/// supervisor (`crates/warden-sandbox/src/unixsock.rs`), which performs them itself.
///
/// - `connect`, `sendmsg`, `sendmmsg`: always. The address (and for the `*msg` calls
///   the `msghdr` holding it) is in memory, which BPF cannot read.
/// - `sendto`: only with a destination, i.e. `dest_addr != NULL` and `addrlen != 0` —
///   registers, which the filter reads race-free. `send()` is `sendto(fd, buf, len,
///   flags, NULL, 0)` in libc, so the common sends on connected sockets (TCP, pipes of
///   tools, the connected datagram sockets of resolvers) pay nothing.
///
/// Everything else is allowed here (the agent's main filter still applies).
pub(crate) fn unix_guard_program() -> Vec<libc::sock_filter> {
    // The low and high 32 bits of a 64-bit argument in `struct seccomp_data`.
    let arg = |i: u32| SECCOMP_DATA_ARG0 + 8 * i;
    let (lo, hi) = if cfg!(target_endian = "little") {
        (0, 4)
    } else {
        (4, 0)
    };
    vec![
        /* 0 */ stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        /* 1 */ jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        /* 2 */ stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        /* 3 */ stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        /* 4 */ jump(BPF_JMP_JEQ_K, libc::SYS_connect as u32, 9, 0),
        /* 5 */ jump(BPF_JMP_JEQ_K, libc::SYS_sendmsg as u32, 8, 0),
        /* 6 */ jump(BPF_JMP_JEQ_K, libc::SYS_sendmmsg as u32, 7, 0),
        /* 7 */ jump(BPF_JMP_JEQ_K, libc::SYS_sendto as u32, 0, 7),
        // sendto: dest_addr (arg 4, a pointer) ...
        /* 8 */
        stmt(BPF_LD_W_ABS, arg(4) + lo),
        /* 9 */ jump(BPF_JMP_JEQ_K, 0, 0, 2),
        /* 10 */ stmt(BPF_LD_W_ABS, arg(4) + hi),
        /* 11 */ jump(BPF_JMP_JEQ_K, 0, 3, 0),
        // ... and addrlen (arg 5, an int: the kernel reads the low 32 bits).
        /* 12 */
        stmt(BPF_LD_W_ABS, arg(5) + lo),
        /* 13 */ jump(BPF_JMP_JEQ_K, 0, 1, 0),
        /* 14 */ stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF),
        /* 15 */ stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
}

const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// Linux 5.19: once the supervisor has received a notification, only a fatal signal
/// interrupts the waiting caller. Without it a signal handler would run and the call be
/// restarted while the supervisor may already have connected or sent (a stream would
/// carry the bytes twice).
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

/// Installs `prog` on the calling thread. `listener`: ask for a user-notification fd.
pub(crate) fn install(
    prog: &[libc::sock_filter],
    listener: bool,
) -> io::Result<Option<std::os::fd::OwnedFd>> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(io::Error::other)?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let set = |flags: libc::c_ulong| {
        // SAFETY: `fprog` points to `prog`, which outlives the call; the kernel copies it.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                1 as libc::c_ulong, /* SECCOMP_SET_MODE_FILTER */
                flags,
                &fprog as *const libc::sock_fprog,
            )
        }
    };
    let r = if listener {
        let r = set(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // Before 5.19: the guard still holds; only the signal behaviour above differs.
            set(SECCOMP_FILTER_FLAG_NEW_LISTENER)
        } else {
            r
        }
    } else {
        set(0)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if listener {
        use std::os::fd::FromRawFd;
        // SAFETY: with NEW_LISTENER the return value is a fresh descriptor we own.
        Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) }))
    } else {
        Ok(None)
    }
}

/// Installs [`unix_guard_program`] on the calling thread and hands its listener to
/// `deliver`, which runs on a helper thread started *before* the guard. Handing a
/// descriptor on is a `sendmsg` (`SCM_RIGHTS`), which the guard mediates: from the
/// guarded thread it would wait for a supervisor that cannot exist before it has the
/// listener. Filters are per thread (no `TSYNC`), and the helper is joined before this
/// returns, so what `execve`s carries the guard.
pub(crate) fn install_guard<F>(deliver: F) -> io::Result<()>
where
    F: FnOnce(std::os::fd::OwnedFd) -> io::Result<()> + Send,
{
    let prog = unix_guard_program();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<std::os::fd::OwnedFd>();
        let helper = std::thread::Builder::new()
            .name("guard-listener".into())
            .spawn_scoped(scope, move || match rx.recv() {
                Ok(l) => deliver(l),
                // The guard was not installed; that error is reported below.
                Err(_) => Ok(()),
            })?;
        let installed = match install(&prog, true) {
            Ok(Some(l)) => tx
                .send(l)
                .map_err(|_| io::Error::other("the guard-listener thread is gone")),
            Ok(None) => Err(io::Error::other("the kernel returned no listener")),
            Err(e) => Err(e),
        };
        drop(tx);
        let delivered = helper
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the guard-listener thread panicked")));
        installed.and(delivered)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_compiles_and_fits() {
        let p = agent_program().unwrap();
        assert!(
            p.len() < 4096,
            "BPF programs are limited to 4096 instructions"
        );
        assert_eq!(p[0].k, SECCOMP_DATA_ARCH);
    }

    /// Runs a classic BPF program of the few opcodes our filters use on `seccomp_data`.
    fn eval(prog: &[libc::sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&(nr as u32).to_ne_bytes());
        data.extend_from_slice(&AUDIT_ARCH.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K => {
                    let hit = if i.code == BPF_JMP_JEQ_K {
                        acc == i.k
                    } else {
                        acc >= i.k
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                c => panic!("opcode {c:#x} not modelled"),
            }
        }
    }

    #[test]
    fn guard_notifies_exactly_the_calls_that_can_name_a_socket() {
        let p = unix_guard_program();
        let notif = SECCOMP_RET_USER_NOTIF;
        let allow = SECCOMP_RET_ALLOW;
        let ptr = 0x7fff_0000_1000u64;
        assert_eq!(eval(&p, libc::SYS_connect, [3, ptr, 16, 0, 0, 0]), notif);
        assert_eq!(eval(&p, libc::SYS_sendmsg, [3, ptr, 0, 0, 0, 0]), notif);
        assert_eq!(eval(&p, libc::SYS_sendmmsg, [3, ptr, 2, 0, 0, 0]), notif);
        // sendto with a destination, also one whose pointer has only high bits set.
        assert_eq!(eval(&p, libc::SYS_sendto, [3, ptr, 5, 0, ptr, 110]), notif);
        assert_eq!(
            eval(&p, libc::SYS_sendto, [3, ptr, 5, 0, 1 << 40, 110]),
            notif
        );
        // The upper half of addrlen is not part of the int the kernel reads.
        assert_eq!(
            eval(&p, libc::SYS_sendto, [3, ptr, 5, 0, ptr, 1 << 32]),
            allow
        );
        // send(): no destination.
        assert_eq!(eval(&p, libc::SYS_sendto, [3, ptr, 5, 0, 0, 0]), allow);
        assert_eq!(eval(&p, libc::SYS_sendto, [3, ptr, 5, 0, 0, 110]), allow);
        assert_eq!(eval(&p, libc::SYS_sendto, [3, ptr, 5, 0, ptr, 0]), allow);
        for nr in [
            libc::SYS_write,
            libc::SYS_recvmsg,
            libc::SYS_socket,
            libc::SYS_bind,
        ] {
            assert_eq!(
                eval(&p, nr, [3, ptr, 5, 0, ptr, 110]),
                allow,
                "syscall {nr}"
            );
        }
    }
}
