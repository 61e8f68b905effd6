/* Runs inside a session (tests/unix_dgram.py): swaps the destination of sendto() between
 * the session's socket argv[1] and the host's argv[2] (same length) while the calls are in
 * flight. What the supervisor checks must be what is sent: every successful send must
 * arrive at the session's socket. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

static struct sockaddr_un addr;
static const char *names[2];
static atomic_int stop;

static void *flip(void *arg) {
    volatile char *p = addr.sun_path;
    size_t n = strlen(names[0]);
    (void)arg;
    for (unsigned i = 0; !atomic_load_explicit(&stop, memory_order_relaxed); i++)
        for (size_t k = 0; k < n; k++)
            p[k] = names[i & 1][k];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 || strlen(argv[1]) != strlen(argv[2]) || strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "usage: race OWN HOST (names of equal length)\n");
        return 2;
    }
    names[0] = argv[1];
    names[1] = argv[2];
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    int own = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, argv[1]);
    if (s < 0 || own < 0 || bind(own, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("socket/bind");
        return 2;
    }
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    int ok = 0, refused = 0, other = 0;
    char buf[8];
    for (int i = 0; i < 2000; i++) {
        if (sendto(s, "RACE", 4, 0, (struct sockaddr *)&addr, sizeof addr) == 4) {
            ok++;
            if (recv(own, buf, sizeof buf, 0) != 4) {
                fprintf(stderr, "a send that succeeded did not arrive at the session's socket\n");
                return 1;
            }
        } else if (errno == ECONNREFUSED) {
            refused++;
        } else {
            other++;
        }
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    printf("race: %d sent to the session's socket, %d refused, %d other errors\n", ok, refused, other);
    return 0;
}
