/* Cost of the unix-socket guard on sends (bench/guard_sends.sh): ns per send+recv pair
 * for sends the guard leaves in the kernel and for sends the supervisor performs.
 * Run in the current directory (a writable workspace). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    char buf[64] = "x";
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, pair)) die("socketpair");
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "bench-%d.dgram", getpid());
    unlink(un.sun_path);
    int bound = socket(AF_UNIX, SOCK_DGRAM, 0), unb = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bound < 0 || unb < 0 || bind(bound, (struct sockaddr *)&un, sizeof un)) die("unix bind");
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t inlen = sizeof in;
    int udp_rx = socket(AF_INET, SOCK_DGRAM, 0), udp_tx = socket(AF_INET, SOCK_DGRAM, 0);
    int udp_conn = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(udp_rx, (struct sockaddr *)&in, sizeof in) || getsockname(udp_rx, (struct sockaddr *)&in, &inlen) ||
        connect(udp_conn, (struct sockaddr *)&in, sizeof in))
        die("udp");
    struct iovec iov = {buf, 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    const char *names[] = {"send() socketpair      [in kernel] ", "send() connected UDP   [in kernel] ",
                           "sendmsg() socketpair   [supervisor]", "sendto() unix path     [supervisor]",
                           "sendto() UDP address   [supervisor]"};
    for (int c = 0; c < 5; c++) {
        double t0 = now();
        for (int i = 0; i < n; i++) {
            ssize_t r;
            int rx;
            switch (c) {
            case 0: r = send(pair[0], buf, 1, 0); rx = pair[1]; break;
            case 1: r = send(udp_conn, buf, 1, 0); rx = udp_rx; break;
            case 2: r = sendmsg(pair[0], &mh, 0); rx = pair[1]; break;
            case 3: r = sendto(unb, buf, 1, 0, (struct sockaddr *)&un, sizeof un); rx = bound; break;
            default: r = sendto(udp_tx, buf, 1, 0, (struct sockaddr *)&in, sizeof in); rx = udp_rx; break;
            }
            if (r != 1 || recv(rx, buf, sizeof buf, 0) != 1) die(names[c]);
        }
        printf("%s %8.0f ns\n", names[c], (now() - t0) / n);
    }
    unlink(un.sun_path);
    return 0;
}
