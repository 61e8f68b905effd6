/* What bench/relay.c and bench/sockmap_relay.c share: reading one `CONNECT ip:port`
 * request from a client, up to its blank line, and where it asks to go. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* 0 with `to` filled in, -1 on a short read or a request that is not CONNECT ip:port. */
static int read_connect(int client, struct sockaddr_in *to) {
  char req[4096], host[64];
  size_t len = 0;
  int port;
  for (;;) {
    ssize_t n = read(client, req + len, sizeof req - 1 - len);
    if (n <= 0) return -1;
    len += n;
    req[len] = 0;
    if (strstr(req, "\r\n\r\n")) break;
    if (len == sizeof req - 1) return -1;
  }
  memset(to, 0, sizeof *to);
  to->sin_family = AF_INET;
  if (sscanf(req, "CONNECT %63[0-9.]:%d ", host, &port) != 2 ||
      inet_pton(AF_INET, host, &to->sin_addr) != 1)
    return -1;
  to->sin_port = htons(port);
  return 0;
}
