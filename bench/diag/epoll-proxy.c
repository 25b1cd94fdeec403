/*
 * A minimal single-threaded epoll TCP proxy, for `node bench/diag.ts --against epoll|epoll-yield`
 * only (never a product path): what any C proxy with HAProxy's system calls per request gets on
 * this machine, without fulcrum's engine, counters or JavaScript. Round-robin over the backends,
 * TCP_NODELAY on both sides, one read and one write per chunk.
 *
 *   epoll-proxy [--yield-point] [--half-close] [--smart-connect] LISTEN BACKEND [BACKEND…]
 *                                                               (addresses: IPv4 a.b.c.d:port)
 *
 * --yield-point reads the thread's CPU clock before each epoll_wait, as HAProxy's loop does and
 * fulcrum's relay does after each batch (relay/loop.c yield_point()): the comparison that showed why.
 * --half-close keeps TCP's half-close as HAProxy and fulcrum do: a side's EOF shuts the other
 * side's write direction (shutdown) and the pair ends at the second EOF. Without it the first EOF
 * closes both sockets — cheaper, and wrong for a client that half-closes and waits for its reply.
 * --smart-connect: TCP_QUICKACK off before connect when the client's first bytes are already there
 * (a one-byte peek), so the handshake's last ACK rides on them (relay.c js_connect does the same).
 *
 * Request/response only (rr, churn): a write the kernel does not take whole ends the session
 * rather than being buffered, which never happens with rr's 64-byte messages.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
static int peer[MAX_FDS];
static unsigned char ended[MAX_FDS]; /* --half-close: this side's EOF was read and passed on */
static char buf[64 * 1024];

static int parse(const char *text, struct sockaddr_in *a) {
  char host[64];
  const char *colon = strrchr(text, ':');
  if (colon == NULL || (size_t)(colon - text) >= sizeof(host)) return -1;
  memcpy(host, text, (size_t)(colon - text));
  host[colon - text] = 0;
  memset(a, 0, sizeof(*a));
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)atoi(colon + 1));
  return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static void end_pair(int fd) {
  int other = peer[fd];
  peer[fd] = -1;
  close(fd);
  if (other >= 0) {
    peer[other] = -1;
    close(other);
  }
}

int main(int argc, char **argv) {
  int yield = 0, half_close = 0, smart = 0, first = 1;
  for (; first < argc && strncmp(argv[first], "--", 2) == 0; first++) {
    if (strcmp(argv[first], "--yield-point") == 0) yield = 1;
    else if (strcmp(argv[first], "--half-close") == 0) half_close = 1;
    else if (strcmp(argv[first], "--smart-connect") == 0) smart = 1;
    else return fprintf(stderr, "unknown option %s\n", argv[first]), 2;
  }
  if (argc - first < 2) {
    fprintf(stderr, "usage: epoll-proxy [--yield-point] [--half-close] [--smart-connect] LISTEN BACKEND [BACKEND...]\n");
    return 2;
  }
  struct sockaddr_in listen_at, backends[16];
  int nb = 0;
  if (parse(argv[first], &listen_at) != 0) return fprintf(stderr, "bad address %s\n", argv[first]), 2;
  for (int i = first + 1; i < argc && nb < 16; i++) {
    if (parse(argv[i], &backends[nb++]) != 0) return fprintf(stderr, "bad address %s\n", argv[i]), 2;
  }
  int one = 1;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(lfd, (struct sockaddr *)&listen_at, sizeof(listen_at)) != 0 || listen(lfd, 1024) != 0) {
    perror("listen");
    return 1;
  }
  memset(peer, -1, sizeof(peer));
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
  printf("listening %s\n", argv[first]);
  fflush(stdout);
  unsigned next = 0;
  struct epoll_event evs[256];
  for (;;) {
    if (yield) {
      struct timespec ts;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    }
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (c < 0) break;
          /* Loopback: a blocking connect completes at once. */
          int s = socket(AF_INET, SOCK_STREAM, 0);
          char probe;
          if (smart && s >= 0 && recv(c, &probe, 1, MSG_PEEK | MSG_DONTWAIT) == 1) {
            int off = 0;
            setsockopt(s, IPPROTO_TCP, TCP_QUICKACK, &off, sizeof(off));
          }
          if (c >= MAX_FDS || s < 0 || s >= MAX_FDS || connect(s, (struct sockaddr *)&backends[next++ % nb], sizeof(backends[0])) != 0) {
            close(c);
            if (s >= 0) close(s);
            continue;
          }
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          peer[c] = s;
          peer[s] = c;
          ended[c] = ended[s] = 0;
          struct epoll_event x = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &x);
          x.data.fd = s;
          epoll_ctl(ep, EPOLL_CTL_ADD, s, &x);
        }
        continue;
      }
      if (peer[fd] < 0) continue; /* its pair ended earlier in this batch */
      ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r == 0 && half_close && !ended[peer[fd]]) {
        /* The first EOF: pass it on and stop polling this side (level-triggered, it stays readable). */
        ended[fd] = 1;
        shutdown(peer[fd], SHUT_WR);
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        continue;
      }
      if (r <= 0 || send(peer[fd], buf, (size_t)r, MSG_DONTWAIT | MSG_NOSIGNAL) != r) end_pair(fd);
    }
  }
}
