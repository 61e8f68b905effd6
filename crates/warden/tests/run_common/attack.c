/* Attacks from inside a Warden session. Usage: attack NAME [ARG].
 * Exit 0: the attack was blocked (what we want). Exit 1: it succeeded. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/ptrace.h>
#include <unistd.h>
#include <linux/netlink.h>

static int blocked(long r, const char *what) {
    if (r < 0) { printf("%s blocked: %s\n", what, strerror(errno)); return 0; }
    printf("%s SUCCEEDED (%ld)\n", what, r); return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *n = argv[1];
    long pid = argc > 2 ? atol(argv[2]) : 1;
    if (!strcmp(n, "io_uring")) { char p[120] = {0}; return blocked(syscall(SYS_io_uring_setup, 4, p), n); }
    if (!strcmp(n, "keyctl")) return blocked(syscall(SYS_keyctl, 0 /*GET_KEYRING_ID*/, -3 /*SESSION*/, 1), n);
    if (!strcmp(n, "add_key")) return blocked(syscall(SYS_add_key, "user", "k", "v", 1, -3), n);
    if (!strcmp(n, "bpf")) { char a[128] = {0}; return blocked(syscall(SYS_bpf, 0, a, sizeof a), n); }
    if (!strcmp(n, "perf")) { char a[128] = {0}; *(unsigned *)(a + 4) = 128; return blocked(syscall(SYS_perf_event_open, a, 0, -1, -1, 0), n); }
    if (!strcmp(n, "userfaultfd")) return blocked(syscall(SYS_userfaultfd, 0), n);
    if (!strcmp(n, "mount")) return blocked(mount("none", "/tmp", "tmpfs", 0, NULL), n);
    if (!strcmp(n, "umount")) return blocked(umount2("/proc", MNT_DETACH), n);
    if (!strcmp(n, "unshare_user")) return blocked(unshare(CLONE_NEWUSER), n);
    if (!strcmp(n, "unshare_net")) return blocked(unshare(CLONE_NEWNET), n);
    if (!strcmp(n, "clone_newuser")) {
        long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) waitpid(r, NULL, 0);
        return blocked(r, n);
    }
    if (!strcmp(n, "clone3")) { char a[88] = {0}; return blocked(syscall(SYS_clone3, a, sizeof a), n); }
    if (!strcmp(n, "clone3_newuser")) {
        /* struct clone_args: flags at 0, exit_signal at 32; no stack: fork-like. */
        unsigned long long a[11] = {0};
        a[0] = CLONE_NEWUSER | CLONE_NEWNS;
        a[4] = SIGCHLD;
        long r = syscall(SYS_clone3, a, sizeof a);
        if (r == 0) _exit(0);
        if (r > 0) waitpid(r, NULL, 0);
        return blocked(r, n);
    }
    if (!strcmp(n, "fork")) { pid_t p = fork(); if (p == 0) _exit(0); if (p > 0) waitpid(p, NULL, 0); return p > 0 ? 0 : 1; }
    if (!strcmp(n, "af_packet")) return blocked(socket(AF_PACKET, SOCK_RAW, 0), n);
    if (!strcmp(n, "af_vsock")) return blocked(socket(40 /*AF_VSOCK*/, SOCK_STREAM, 0), n);
    if (!strcmp(n, "netlink_audit")) return blocked(socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT), n);
    if (!strcmp(n, "netlink_diag")) return blocked(socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG), n);
    if (!strcmp(n, "netlink_uevent")) return blocked(socket(AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT), n);
    if (!strcmp(n, "netlink_route")) return socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) >= 0 ? 0 : 1; /* allowed */
    if (!strcmp(n, "tiocsti")) { char c = 'x'; int fd = open("/dev/tty", 2); if (fd < 0) fd = 0; return blocked(ioctl(fd, TIOCSTI, &c), n); }
    if (!strcmp(n, "tioclinux")) { char c = 0; return blocked(ioctl(0, TIOCLINUX, &c), n); }
    if (!strcmp(n, "ptrace")) return blocked(ptrace(PTRACE_ATTACH, (pid_t)pid, 0, 0), n);
    if (!strcmp(n, "ptrace_child")) {
        pid_t c = fork();
        if (c == 0) { pause(); _exit(0); }
        long r = ptrace(PTRACE_ATTACH, c, 0, 0);
        kill(c, SIGKILL); waitpid(c, NULL, 0);
        return blocked(r, n);
    }
    if (!strcmp(n, "vm_readv")) {
        char buf[8]; struct iovec l = {buf, 8}, r = {(void *)0x400000, 8};
        return blocked(syscall(SYS_process_vm_readv, (pid_t)pid, &l, 1, &r, 1, 0), n);
    }
    if (!strcmp(n, "setns")) return blocked(syscall(SYS_setns, 0, 0), n);
    if (!strcmp(n, "kill")) return blocked(kill((pid_t)pid, 0), n);
    if (!strcmp(n, "personality")) return blocked(syscall(SYS_personality, 0x0008 /*PER_LINUX32? READ_IMPLIES_EXEC-ish*/ | 0x0400000), n);
    if (!strcmp(n, "x32")) return blocked(syscall(0x40000000 | 39 /* x32 getpid */), n);
    if (!strcmp(n, "int80")) {
        long r;
        /* 32-bit getpid (20) through the i386 entry point. */
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
        printf("int80 SUCCEEDED (%ld)\n", r);
        return 1;
    }
    fprintf(stderr, "unknown attack %s\n", n);
    return 2;
}
