/* The floor for the CONNECT transfer in bench/proxy.sh: the least a userspace relay can
 * do. It answers one `CONNECT ip:port` per connection and then copies bytes both ways,
 * one blocking thread per direction, 256 KiB read()/write() at a time (the most
 * Warden's relay grows to). No policy, no name resolution, no audit, no TLS check.
 * Any proxy that carries the bytes through its own memory pays at least this much.
 *
 *   cc -O2 -pthread -o relay bench/relay.c && ./relay PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connect.h"

struct direction { int from, to; };

static void *copy(void *arg) {
  struct direction *d = arg;
  static __thread char buf[256 * 1024];
  for (;;) {
    ssize_t n = read(d->from, buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t m = write(d->to, buf + off, n - off);
      if (m <= 0) goto out;
      off += m;
    }
  }
out:
  shutdown(d->to, SHUT_WR);
  return NULL;
}

static void *serve(void *arg) {
  int client = (int)(long)arg, upstream = -1;
  struct sockaddr_in to;
  if (read_connect(client, &to) != 0) goto done;
  upstream = socket(AF_INET, SOCK_STREAM, 0);
  if (upstream < 0 || connect(upstream, (struct sockaddr *)&to, sizeof to) != 0) goto done;
  static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  if (write(client, ok, sizeof ok - 1) != sizeof ok - 1) goto done;
  struct direction up = {client, upstream}, down = {upstream, client};
  pthread_t t;
  if (pthread_create(&t, NULL, copy, &up) != 0) goto done;
  copy(&down);
  pthread_join(t, NULL);
done:
  if (upstream >= 0) close(upstream);
  close(client);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: relay PORT\n"); return 2; }
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 128) != 0) {
    perror("relay: listen");
    return 1;
  }
  for (;;) {
    int c = accept(l, NULL, NULL);
    pthread_t t;
    if (c >= 0 && pthread_create(&t, NULL, serve, (void *)(long)c) == 0) pthread_detach(t);
    else if (c >= 0) close(c);
  }
}
