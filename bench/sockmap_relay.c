/* The kernel-side floor for the CONNECT transfer in bench/proxy.sh: a relay that never
 * touches the tunnel's bytes. It answers `CONNECT ip:port`, puts both sockets into a
 * BPF sockmap whose stream-verdict program redirects every received buffer to the
 * other socket's send path, and leaves the data to the kernel (no read, no write, no
 * copy into user space). One tunnel at a time; needs root (BPF_PROG_TYPE_SK_SKB).
 * What a proxy could do if it handed established tunnels to the kernel.
 *
 *   cc -O2 -o sockmap_relay bench/sockmap_relay.c && ./sockmap_relay PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "connect.h"

static long bpf(int cmd, union bpf_attr *attr) {
  return syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

static int put(int map, int key, int fd) {
  union bpf_attr a = {0};
  a.map_fd = map;
  a.key = (unsigned long)&key;
  a.value = (unsigned long)&fd;
  a.flags = BPF_ANY;
  return bpf(BPF_MAP_UPDATE_ELEM, &a);
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: sockmap_relay PORT\n"); return 2; }
  int port = atoi(argv[1]);
  union bpf_attr a = {0};
  a.map_type = BPF_MAP_TYPE_SOCKMAP; /* 0: the client's socket, 1: the upstream's */
  a.key_size = 4;
  a.value_size = 4;
  a.max_entries = 2;
  int map = bpf(BPF_MAP_CREATE, &a);
  if (map < 0) { perror("sockmap_relay: map"); return 1; }
  /* Bytes arriving on the socket whose local port is PORT (the client's) go to entry
   * 1, everything else to entry 0. */
  struct bpf_insn prog[] = {
    {.code = BPF_LDX | BPF_W | BPF_MEM, .dst_reg = 2, .src_reg = 1,
     .off = offsetof(struct __sk_buff, local_port)},
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 3, .imm = 0},
    {.code = BPF_JMP | BPF_JNE | BPF_K, .dst_reg = 2, .off = 1, .imm = port},
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 3, .imm = 1},
    {.code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = 2, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map},
    {.code = 0},
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 4, .imm = 0}, /* flags: egress */
    {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_sk_redirect_map},
    {.code = BPF_JMP | BPF_EXIT},
  };
  static char log[65536];
  memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_SK_SKB;
  a.insns = (unsigned long)prog;
  a.insn_cnt = sizeof prog / sizeof prog[0];
  a.license = (unsigned long)"GPL";
  a.log_buf = (unsigned long)log;
  a.log_size = sizeof log;
  a.log_level = 1;
  int verdict = bpf(BPF_PROG_LOAD, &a);
  if (verdict < 0) { perror("sockmap_relay: load"); fputs(log, stderr); return 1; }
  memset(&a, 0, sizeof a);
  a.target_fd = map;
  a.attach_bpf_fd = verdict;
  a.attach_type = BPF_SK_SKB_STREAM_VERDICT;
  if (bpf(BPF_PROG_ATTACH, &a) < 0) { perror("sockmap_relay: attach"); return 1; }

  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(l, (struct sockaddr *)&at, sizeof at) != 0 || listen(l, 16) != 0) {
    perror("sockmap_relay: listen");
    return 1;
  }
  for (;;) {
    int client = accept(l, NULL, NULL), upstream = -1;
    struct sockaddr_in to;
    if (client < 0) continue;
    if (read_connect(client, &to) != 0) goto done;
    upstream = socket(AF_INET, SOCK_STREAM, 0);
    if (upstream < 0 || connect(upstream, (struct sockaddr *)&to, sizeof to) != 0) goto done;
    /* Into the map before the client hears back: bytes it sends after the answer must
     * meet the verdict program, not the socket's receive queue. */
    if (put(map, 0, client) != 0 || put(map, 1, upstream) != 0) {
      perror("sockmap_relay: insert");
      goto done;
    }
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    if (write(client, ok, sizeof ok - 1) != sizeof ok - 1) goto done;
    struct pollfd hup = {.fd = client, .events = POLLRDHUP};
    poll(&hup, 1, -1); /* until the client hangs up */
  done:
    if (upstream >= 0) close(upstream);
    close(client);
  }
}
