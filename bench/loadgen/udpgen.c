/*
 * udpgen — the UDP load generator and echo backend of fulcrum's benchmark (bench/lib/udp.ts).
 *
 *   echo   --listen IP:PORT            echoes every datagram (recvmmsg / sendmmsg, 64 at a time);
 *                                      prints {"ready":true,"port":P} once bound
 *   rr     --target IP:PORT --flows N  N sockets (N flows through the proxy), each sends a SIZE-byte
 *          --duration S --warmup S     datagram with its flow and sequence number, waits for that
 *                                      echo, checks it, sends the next: datagrams/s in the window
 *   churn  --target --flows N ...      N in flight, each a new socket (a new source port, a new flow)
 *                                      per request: socket, send, echo, close
 *   idle   --target --flows N          opens N flows (each proven by one echo), prints
 *                                      {"established":N,...}, holds them until stdin closes
 *
 * A datagram unanswered for 300 ms is counted lost and sent again (rr) or its socket replaced
 * (churn); a wrong echo is counted corrupt. Every client run prints one JSON line at its end.
 *
 * Build: cc -O2 -o udpgen udpgen.c   (bench/lib/udp.ts does this into bench/out/)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LOSS_NS 300000000LL
#define BATCH 64

static struct sockaddr_in target, listen_addr, source;
static int flows = 64, size = 64;
static double duration = 5, warmup = 0.5;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void parse_addr(const char *s, struct sockaddr_in *a) {
  char host[64];
  const char *colon = strrchr(s, ':');
  if (colon == NULL || (size_t)(colon - s) >= sizeof(host)) {
    fprintf(stderr, "udpgen: bad address %s\n", s);
    exit(2);
  }
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = 0;
  memset(a, 0, sizeof(*a));
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
    fprintf(stderr, "udpgen: bad address %s\n", s);
    exit(2);
  }
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static int echo_server(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  int big = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
  if (bind(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) != 0) {
    perror("udpgen: bind");
    return 1;
  }
  struct sockaddr_in bound;
  socklen_t blen = sizeof(bound);
  getsockname(fd, (struct sockaddr *)&bound, &blen);
  printf("{\"ready\":true,\"port\":%d}\n", ntohs(bound.sin_port));
  fflush(stdout);
  static uint8_t bufs[BATCH][2048];
  struct mmsghdr m[BATCH];
  struct iovec iov[BATCH];
  struct sockaddr_in from[BATCH];
  uint64_t n_total = 0;
  while (!stop) {
    for (int i = 0; i < BATCH; i++) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = sizeof(bufs[i]);
      memset(&m[i].msg_hdr, 0, sizeof(m[i].msg_hdr));
      m[i].msg_hdr.msg_name = &from[i];
      m[i].msg_hdr.msg_namelen = sizeof(from[i]);
      m[i].msg_hdr.msg_iov = &iov[i];
      m[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(fd, m, BATCH, MSG_WAITFORONE, NULL);
    if (n <= 0) continue;
    for (int i = 0; i < n; i++) iov[i].iov_len = m[i].msg_len;
    sendmmsg(fd, m, (unsigned)n, 0);
    n_total += (uint64_t)n;
  }
  printf("{\"echoed\":%llu}\n", (unsigned long long)n_total);
  return 0;
}

typedef struct {
  int fd;
  uint32_t seq;
  int64_t sent_ns;
} Flow;

/* A socket from the source address (a new ephemeral port), connected to the target; -1 on failure. */
static int flow_socket(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (bind(fd, (struct sockaddr *)&source, sizeof(source)) != 0 || connect(fd, (struct sockaddr *)&target, sizeof(target)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void fill(uint8_t *buf, uint32_t id, uint32_t seq) {
  memset(buf, 'x', (size_t)size);
  memcpy(buf, &id, 4);
  memcpy(buf + 4, &seq, 4);
}

static int send_flow(Flow *f, uint32_t id) {
  uint8_t buf[2048];
  fill(buf, id, f->seq);
  f->sent_ns = now_ns();
  return send(f->fd, buf, (size_t)size, 0) == size ? 0 : -1;
}

/* rr and churn: flows in flight, each waiting for its echo. */
static int clients(int churn) {
  Flow *fs = calloc((size_t)flows, sizeof(Flow));
  int ep = epoll_create1(0);
  uint64_t count = 0, lost = 0, corrupt = 0, errors = 0;
  for (int i = 0; i < flows; i++) {
    fs[i].fd = flow_socket();
    if (fs[i].fd < 0) {
      perror("udpgen: socket");
      return 1;
    }
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fs[i].fd, &e);
    if (send_flow(&fs[i], (uint32_t)i) != 0) errors++;
  }
  int64_t t0 = now_ns();
  int64_t w0 = t0 + (int64_t)(warmup * 1e9), w1 = w0 + (int64_t)(duration * 1e9);
  int64_t last_sweep = t0;
  struct epoll_event evs[256];
  uint8_t buf[2048], want[2048];
  for (;;) {
    int64_t t = now_ns();
    if (t >= w1) break;
    int n = epoll_wait(ep, evs, 256, 50);
    t = now_ns();
    for (int k = 0; k < n; k++) {
      uint32_t i = evs[k].data.u32;
      Flow *f = &fs[i];
      ssize_t r = recv(f->fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (r < 0) {
        if (errno != EAGAIN) errors++;
        continue;
      }
      fill(want, i, f->seq);
      if (r != size || memcmp(buf, want, (size_t)size) != 0) {
        uint32_t seq;
        memcpy(&seq, buf + 4, 4);
        if (r == size && seq < f->seq) continue; /* a late echo of a datagram sent again */
        corrupt++;
        continue;
      }
      if (t >= w0 && t < w1) count++;
      f->seq++;
      if (churn) {
        /* A new socket, a new source port: a new flow through the proxy. */
        epoll_ctl(ep, EPOLL_CTL_DEL, f->fd, NULL);
        close(f->fd);
        f->fd = flow_socket();
        if (f->fd < 0) {
          errors++;
          continue;
        }
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, f->fd, &e);
      }
      if (send_flow(f, i) != 0) errors++;
    }
    if (t - last_sweep > 50000000LL) {
      last_sweep = t;
      for (int i = 0; i < flows; i++) {
        if (fs[i].fd < 0 || t - fs[i].sent_ns < LOSS_NS) continue;
        lost++;
        if (send_flow(&fs[i], (uint32_t)i) != 0) errors++;
      }
    }
  }
  double secs = duration;
  printf("{\"mode\":\"%s\",\"flows\":%d,\"count\":%llu,\"per_s\":%.1f,\"lost\":%llu,\"corrupt\":%llu,\"errors\":%llu,\"ok\":%s}\n",
         churn ? "churn" : "rr", flows, (unsigned long long)count, (double)count / secs, (unsigned long long)lost,
         (unsigned long long)corrupt, (unsigned long long)errors, corrupt == 0 && errors == 0 ? "true" : "false");
  return 0;
}

/* idle: N flows, each proven by one echo, held until stdin closes. */
static int idle(void) {
  Flow *fs = calloc((size_t)flows, sizeof(Flow));
  int ep = epoll_create1(0);
  uint64_t errors = 0, lost = 0;
  int established = 0;
  int64_t t0 = now_ns();
  /* 256 in flight at a time, so no receive buffer overflows. */
  int next = 0, inflight = 0;
  uint8_t *done = calloc((size_t)flows, 1);
  struct epoll_event evs[256];
  uint8_t buf[2048];
  while (established < flows && now_ns() - t0 < 120000000000LL) {
    while (inflight < 256 && next < flows) {
      fs[next].fd = flow_socket();
      if (fs[next].fd < 0) {
        errors++;
        next++;
        continue;
      }
      struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)next};
      epoll_ctl(ep, EPOLL_CTL_ADD, fs[next].fd, &e);
      send_flow(&fs[next], (uint32_t)next);
      next++;
      inflight++;
    }
    if (inflight == 0) break;
    int n = epoll_wait(ep, evs, 256, 50);
    for (int k = 0; k < n; k++) {
      uint32_t i = evs[k].data.u32;
      if (recv(fs[i].fd, buf, sizeof(buf), MSG_DONTWAIT) != size || done[i]) continue;
      done[i] = 1;
      established++;
      inflight--;
      epoll_ctl(ep, EPOLL_CTL_DEL, fs[i].fd, NULL);
    }
    int64_t t = now_ns();
    for (int i = 0; i < next; i++) {
      if (fs[i].fd < 0 || done[i] || t - fs[i].sent_ns < LOSS_NS) continue;
      lost++;
      send_flow(&fs[i], (uint32_t)i);
    }
  }
  printf("{\"mode\":\"idle\",\"established\":%d,\"lost\":%llu,\"errors\":%llu,\"ms\":%.0f,\"ok\":%s}\n", established,
         (unsigned long long)lost, (unsigned long long)errors, (double)(now_ns() - t0) / 1e6, established == flows ? "true" : "false");
  fflush(stdout);
  char c;
  while (read(0, &c, 1) > 0) {}
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: udpgen echo|rr|churn|idle [options]\n");
    return 2;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  parse_addr("127.0.0.1:0", &source);
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--target")) parse_addr(v, &target);
    else if (!strcmp(k, "--listen")) parse_addr(v, &listen_addr);
    else if (!strcmp(k, "--source")) {
      char a[80];
      snprintf(a, sizeof(a), "%s:0", v);
      parse_addr(a, &source);
    } else if (!strcmp(k, "--flows")) flows = atoi(v);
    else if (!strcmp(k, "--size")) size = atoi(v);
    else if (!strcmp(k, "--duration")) duration = atof(v);
    else if (!strcmp(k, "--warmup")) warmup = atof(v);
    else {
      fprintf(stderr, "udpgen: unknown option %s\n", k);
      return 2;
    }
  }
  if (size < 8 || size > 2048 || flows < 1) {
    fprintf(stderr, "udpgen: --size 8..2048, --flows ≥ 1\n");
    return 2;
  }
  if (!strcmp(argv[1], "echo")) return echo_server();
  if (!strcmp(argv[1], "rr")) return clients(0);
  if (!strcmp(argv[1], "churn")) return clients(1);
  if (!strcmp(argv[1], "idle")) return idle();
  fprintf(stderr, "udpgen: unknown mode %s\n", argv[1]);
  return 2;
}
