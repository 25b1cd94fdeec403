/*
 * loadgen — the load generator and the backends of fulcrum's benchmark harness (bench/run.ts).
 *
 * One small epoll program, so neither the load nor the backends are the bottleneck being measured:
 *
 *   client modes (print one JSON line when done):
 *     rr     N persistent connections; each sends a SIZE-byte request, waits for the whole echo,
 *            checks it byte for byte, sends the next: requests/s and latency p50/p99/p99.9.
 *     churn  a new connection per SIZE-byte request, N in flight: connections/s and latency
 *            (connect start → echo received); the client closes first, or with --read-eof
 *            waits for the other side's close (an echo backend run with --close-after), and a
 *            byte after the reply is counted as corrupt.
 *     bulk   N connections stream a known byte pattern one way for the duration, then half-close;
 *            the sink answers with the byte count it received and how many bytes broke the
 *            pattern: Gbit/s delivered, and any loss or corruption is reported, never hidden.
 *     idle   opens N connections (each proves the whole path with a 1-byte echo), prints a line
 *            when all are established, then holds them until the duration ends or stdin closes.
 *   server modes (print a "ready" JSON line once listening, a stats line on SIGTERM/SIGINT):
 *     echo   echoes every byte back; with --close-after B, closes a connection (FIN) once it
 *            has echoed B bytes: the backend closes first.
 *     sink   reads and checks the bulk pattern; on end of stream writes back a 16-byte report
 *            (bytes received, bytes that broke the pattern; little-endian u64 each) and closes.
 *
 * Every run is bounded in time (--timeout); errors and corrupted bytes are counted and make
 * "ok": false in the output.
 *
 * Build: cc -O2 -pthread -o loadgen loadgen.c   (bench/run.ts does this into bench/out/)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { M_RR, M_CHURN, M_BULK, M_IDLE, M_ECHO, M_SINK };
static const char *MODE_NAMES[] = { "rr", "churn", "bulk", "idle", "echo", "sink" };

/* The bulk pattern: the byte at stream offset i is i % PATTERN_PERIOD. A prime period that is
 * not a divisor of any buffer size, so a lost, repeated or reordered chunk breaks the pattern. */
#define PATTERN_PERIOD 251
#define IO_BUF (256 * 1024)
#define MAX_TARGETS 64
#define MAX_EVENTS 256

/* ── options ──────────────────────────────────────────────────────────────── */

static struct {
  int mode;
  struct sockaddr_in targets[MAX_TARGETS];
  int ntargets;
  struct sockaddr_in listen;
  int conns;
  double duration, warmup, timeout;
  int threads;
  int size;
  uint32_t source_base; /* host order; 0 = let the kernel choose */
  int source_count;
  int inflight; /* idle: connections being opened at once */
  long close_after; /* echo: close once this many bytes were echoed (0: never) */
  int read_eof;     /* churn: after the reply, wait for the peer's FIN before closing */
} opt;

static void die(const char *fmt, const char *arg) {
  fprintf(stderr, "loadgen: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n");
  exit(2);
}

static int parse_addr(const char *s, struct sockaddr_in *out) {
  char host[64];
  const char *colon = strrchr(s, ':');
  if (!colon || colon - s >= (long)sizeof(host)) return -1;
  memcpy(host, s, colon - s);
  host[colon - s] = 0;
  memset(out, 0, sizeof(*out));
  out->sin_family = AF_INET;
  if (inet_pton(AF_INET, host, &out->sin_addr) != 1) return -1;
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) return -1;
  out->sin_port = htons((uint16_t)port);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen rr|churn|bulk|idle --target HOST:PORT[,HOST:PORT…] [options]\n"
          "       loadgen echo|sink --listen HOST:PORT [--threads T]\n"
          "  --conns N         connections (rr, bulk, idle) or connections in flight (churn); default 50\n"
          "  --duration S      measured seconds (idle: how long to hold); default 5\n"
          "  --warmup S        seconds before measuring (rr, churn); default 0.5\n"
          "  --threads T       epoll threads; default 1\n"
          "  --size B          request bytes (rr, churn; default 64) or write size (bulk; default 16384)\n"
          "  --source A.B.C.D  bind client sockets to this address …\n"
          "  --source-count K  … and the K-1 addresses after it, in rotation (more ephemeral ports)\n"
          "  --inflight N      idle: connections opened at once; default 256\n"
          "  --close-after B   echo: close a connection once B bytes were echoed (backend closes first)\n"
          "  --read-eof 1      churn: after the reply, read until the peer closes, then close\n"
          "  --timeout S       hard bound on the whole run; default duration + warmup + 30\n");
  exit(2);
}

static void parse_args(int argc, char **argv) {
  if (argc < 2) usage();
  opt.mode = -1;
  for (int m = 0; m < 6; m++)
    if (!strcmp(argv[1], MODE_NAMES[m])) opt.mode = m;
  if (opt.mode < 0) usage();
  opt.conns = 50;
  opt.duration = 5;
  opt.warmup = 0.5;
  opt.threads = 1;
  opt.size = -1;
  opt.inflight = 256;
  opt.timeout = -1;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) die("missing value after %s", a);
    i++;
    if (!strcmp(a, "--target")) {
      char buf[4096];
      snprintf(buf, sizeof(buf), "%s", v);
      for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (opt.ntargets == MAX_TARGETS) die("too many targets (max 64): %s", v);
        if (parse_addr(tok, &opt.targets[opt.ntargets++]) < 0) die("--target: expected IPv4 HOST:PORT, got %s", tok);
      }
    } else if (!strcmp(a, "--listen")) {
      if (parse_addr(v, &opt.listen) < 0) die("--listen: expected IPv4 HOST:PORT, got %s", v);
    } else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
    else if (!strcmp(a, "--duration")) opt.duration = atof(v);
    else if (!strcmp(a, "--warmup")) opt.warmup = atof(v);
    else if (!strcmp(a, "--threads")) opt.threads = atoi(v);
    else if (!strcmp(a, "--size")) opt.size = atoi(v);
    else if (!strcmp(a, "--inflight")) opt.inflight = atoi(v);
    else if (!strcmp(a, "--close-after")) opt.close_after = atol(v);
    else if (!strcmp(a, "--read-eof")) opt.read_eof = atoi(v) != 0;
    else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
    else if (!strcmp(a, "--source")) {
      struct in_addr in;
      if (inet_pton(AF_INET, v, &in) != 1) die("--source: expected an IPv4 address, got %s", v);
      opt.source_base = ntohl(in.s_addr);
      if (!opt.source_count) opt.source_count = 1;
    } else if (!strcmp(a, "--source-count")) opt.source_count = atoi(v);
    else die("unknown option %s", a);
  }
  /* bulk writes 16 KiB: a 64 KiB write on loopback (MTU 65536) leaves a 53-byte tail segment
   * after every full one, which halves throughput for reasons that have nothing to do with a proxy. */
  if (opt.size < 0) opt.size = opt.mode == M_BULK ? 16384 : 64;
  if (opt.size < 1 || opt.size > IO_BUF) die("--size must be 1–262144%s", "");
  if (opt.conns < 1) die("--conns must be at least 1%s", "");
  if (opt.threads < 1 || opt.threads > 64) die("--threads must be 1–64%s", "");
  if (opt.mode == M_IDLE) opt.threads = 1; /* one thread owns stdin and the "established" line */
  if (opt.mode == M_BULK || opt.mode == M_IDLE) opt.warmup = 0;
  if (opt.timeout < 0) opt.timeout = opt.duration + opt.warmup + 30;
  if (opt.mode <= M_IDLE && opt.ntargets == 0) die("%s needs --target", MODE_NAMES[opt.mode]);
  if (opt.mode >= M_ECHO && opt.listen.sin_family != AF_INET) die("%s needs --listen", MODE_NAMES[opt.mode]);
}

/* ── time and the latency histogram ───────────────────────────────────────── */

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Log-linear buckets over nanoseconds: exact below 64 ns, then 64 buckets per power of two
 * (≤ 1.6 % error), so a percentile costs one pass over ~3,800 counters and recording is a
 * count-leading-zeros and an increment. */
#define HSUB 64
#define HBUCKETS (HSUB * 60)

static inline int hidx(uint64_t v) {
  if (v < HSUB) return (int)v;
  int m = 63 - __builtin_clzll(v); /* ≥ 6 */
  return (m - 5) * HSUB + (int)((v >> (m - 6)) - HSUB);
}

/* The middle of a bucket, in nanoseconds. */
static double hval(int idx) {
  if (idx < HSUB) return idx;
  int m = idx / HSUB + 5;
  uint64_t lo = (uint64_t)(HSUB + idx % HSUB) << (m - 6);
  uint64_t width = 1ull << (m - 6);
  return (double)lo + (double)width / 2.0;
}

static double hpercentile(const uint64_t *h, uint64_t total, double p) {
  if (!total) return 0;
  uint64_t want = (uint64_t)(p * (double)total);
  if (want >= total) want = total - 1;
  uint64_t seen = 0;
  for (int i = 0; i < HBUCKETS; i++) {
    seen += h[i];
    if (seen > want) return hval(i);
  }
  return hval(HBUCKETS - 1);
}

/* ── shared state ─────────────────────────────────────────────────────────── */

static volatile sig_atomic_t stop_flag;
static atomic_uint source_next;
static atomic_uint target_next;
static unsigned char *pattern; /* PATTERN_PERIOD + IO_BUF bytes of the bulk pattern */

static void on_signal(int sig) {
  (void)sig;
  stop_flag = 1;
}

enum { C_FREE, C_CONNECTING, C_SENDING, C_AWAIT, C_STREAM, C_REPORT, C_DONE, C_HELD, C_EOF };

struct conn {
  int fd;
  int state;
  uint64_t t0;       /* rr: request sent; churn/idle: connect started */
  uint32_t off;      /* bytes of the request sent / of the reply received */
  uint64_t seq;      /* rr: requests on this connection */
  uint64_t sent;     /* bulk: bytes written */
  unsigned char *req, *resp;
};

struct worker {
  pthread_t tid;
  int id;
  int epfd;
  int listen_fd;
  int nconns;
  struct conn *conns;
  uint64_t hist[HBUCKETS];
  uint64_t count;     /* completed requests / connections in the window */
  uint64_t total;     /* rr, churn: completed requests / connections, warm-up and tail included */
  uint64_t connected; /* rr, churn: connections whose connect succeeded (each one the proxy accepted) */
  uint64_t errors;
  uint64_t corrupt;   /* bytes (bulk, sink) or replies (rr, churn) that came back wrong */
  uint64_t bytes;     /* bulk: bytes the sinks confirmed; servers: bytes handled */
  uint64_t sent;      /* bulk: bytes written */
  uint64_t accepted;  /* servers */
  uint64_t reports_missing;
  uint64_t t_last;    /* bulk: when the last report arrived */
  uint64_t t_start, t_measure, t_end, t_deadline;
  int established;    /* idle */
  int dropped;        /* idle: held connections closed by the other side */
  int idle_failed;    /* idle: connections that never got their echo */
  int timed_out;
};

static struct worker *workers;

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void ep(struct worker *w, int op, int fd, uint32_t events, void *ptr) {
  struct epoll_event ev = { .events = events, .data.ptr = ptr };
  if (epoll_ctl(w->epfd, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL) {
    perror("loadgen: epoll_ctl");
    exit(2);
  }
}

/* Opens a non-blocking connection to the next target; -1 (and errno) when that failed at once. */
static int open_conn(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  set_nodelay(fd);
  if (opt.source_count > 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in src = { .sin_family = AF_INET };
    unsigned k = atomic_fetch_add(&source_next, 1) % (unsigned)opt.source_count;
    src.sin_addr.s_addr = htonl(opt.source_base + k);
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
      close(fd);
      return -1;
    }
  }
  unsigned t = atomic_fetch_add(&target_next, 1) % (unsigned)opt.ntargets;
  if (connect(fd, (struct sockaddr *)&opt.targets[t], sizeof(opt.targets[t])) < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* ── client: rr, churn, bulk, idle ────────────────────────────────────────── */

static void fill_request(struct conn *c, int idx) {
  /* Each request carries its connection and sequence number, so an echo of the wrong request
   * (or a stale one) is caught as corrupt, not only a wrong length. */
  memset(c->req, 'a' + (int)(c->seq % 26), opt.size);
  uint64_t tag[2] = { (uint64_t)idx, c->seq };
  memcpy(c->req, tag, opt.size < 16 ? opt.size : 16);
}

static void start_conn(struct worker *w, struct conn *c, int idx) {
  for (;;) {
    c->fd = open_conn();
    if (c->fd >= 0) break;
    w->errors++;
    if (now_ns() >= w->t_end || stop_flag) { /* give up: the run is over */
      c->state = C_DONE;
      c->fd = -1;
      return;
    }
    if (w->errors > 1000000) { /* a target that refuses everything: stop spinning */
      c->state = C_DONE;
      return;
    }
    usleep(1000);
  }
  c->state = C_CONNECTING;
  c->off = 0;
  c->t0 = now_ns();
  ep(w, EPOLL_CTL_ADD, c->fd, EPOLLOUT | EPOLLIN, c);
  (void)idx;
}

static void conn_fail(struct worker *w, struct conn *c, int idx) {
  if (c->fd >= 0) close(c->fd); /* close() also drops it from the epoll set */
  c->fd = -1;
  uint64_t t = now_ns();
  if (opt.mode == M_IDLE) {
    if (c->state == C_HELD) w->dropped++, w->established--;
    else w->idle_failed++;
    w->errors++;
    c->state = C_DONE;
    return;
  }
  if (opt.mode == M_BULK) {
    w->errors++;
    c->state = C_DONE;
    return;
  }
  if (t >= w->t_measure && t < w->t_end) w->errors++;
  if (t < w->t_end) start_conn(w, c, idx);
  else c->state = C_DONE;
}

static void send_request(struct worker *w, struct conn *c, int idx) {
  while (c->off < (uint32_t)opt.size) {
    ssize_t n = write(c->fd, c->req + c->off, opt.size - c->off);
    if (n < 0) {
      if (errno == EAGAIN) {
        c->state = C_SENDING;
        ep(w, EPOLL_CTL_MOD, c->fd, EPOLLOUT, c);
        return;
      }
      conn_fail(w, c, idx);
      return;
    }
    c->off += (uint32_t)n;
  }
  if (c->state != C_AWAIT) ep(w, EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
  c->state = C_AWAIT;
  c->off = 0;
}

static void record(struct worker *w, uint64_t t0, uint64_t t) {
  w->total++;
  if (t >= w->t_measure && t < w->t_end) {
    w->hist[hidx(t - t0)]++;
    w->count++;
  }
}

/* rr/churn/idle: the reply arrived in full. */
static void reply_done(struct worker *w, struct conn *c, int idx) {
  uint64_t t = now_ns();
  int size = opt.mode == M_IDLE ? 1 : opt.size;
  if (memcmp(c->req, c->resp, size) != 0) {
    w->corrupt++;
  }
  if (opt.mode == M_RR) {
    record(w, c->t0, t);
    if (t >= w->t_end) {
      close(c->fd);
      c->fd = -1;
      c->state = C_DONE;
      return;
    }
    c->seq++;
    fill_request(c, idx);
    c->off = 0;
    c->t0 = t;
    c->state = C_AWAIT; /* stays registered for EPOLLIN */
    send_request(w, c, idx);
  } else if (opt.mode == M_CHURN) {
    if (opt.read_eof) { /* the backend closes first: wait for its FIN through the proxy */
      c->state = C_EOF;
      return;
    }
    record(w, c->t0, t);
    close(c->fd);
    c->fd = -1;
    if (t < w->t_end) start_conn(w, c, idx);
    else c->state = C_DONE;
  } else { /* idle: proven end to end; now hold it, watching only for it being closed */
    c->state = C_HELD;
    w->established++;
    ep(w, EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLRDHUP, c);
  }
}

static void bulk_write(struct worker *w, struct conn *c, int idx) {
  uint64_t t = now_ns();
  if (t >= w->t_end) {
    shutdown(c->fd, SHUT_WR);
    c->state = C_REPORT;
    c->off = 0;
    ep(w, EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
    return;
  }
  for (int i = 0; i < 16; i++) {
    ssize_t n = write(c->fd, pattern + c->sent % PATTERN_PERIOD, opt.size);
    if (n < 0) {
      if (errno == EAGAIN) return;
      conn_fail(w, c, idx);
      return;
    }
    c->sent += (uint64_t)n;
    w->sent += (uint64_t)n;
  }
}

static void bulk_report(struct worker *w, struct conn *c, int idx) {
  ssize_t n = read(c->fd, c->resp + c->off, 16 - c->off);
  if (n < 0 && errno == EAGAIN) return;
  if (n <= 0) {
    conn_fail(w, c, idx);
    return;
  }
  c->off += (uint32_t)n;
  if (c->off < 16) return;
  uint64_t got, bad;
  memcpy(&got, c->resp, 8);
  memcpy(&bad, c->resp + 8, 8);
  w->bytes += got;
  w->corrupt += bad;
  if (got != c->sent) {
    /* Bytes lost or added on the way count as corrupt too: the sink saw a different stream. */
    w->corrupt += got > c->sent ? got - c->sent : c->sent - got;
  }
  w->t_last = now_ns();
  close(c->fd);
  c->fd = -1;
  c->state = C_DONE;
}

static void client_event(struct worker *w, struct conn *c, uint32_t events) {
  int idx = (int)(c - w->conns);
  if (c->state == C_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof(err);
    if ((events & (EPOLLERR | EPOLLHUP)) || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
      conn_fail(w, c, idx);
      return;
    }
    if (!(events & EPOLLOUT)) return;
    w->connected++;
    if (opt.mode == M_BULK) {
      c->state = C_STREAM;
      ep(w, EPOLL_CTL_MOD, c->fd, EPOLLOUT, c);
      bulk_write(w, c, idx);
      return;
    }
    c->state = C_SENDING;
    c->off = 0;
    if (opt.mode == M_IDLE) {
      c->req[0] = 'i';
      ssize_t n = write(c->fd, c->req, 1);
      if (n != 1) {
        conn_fail(w, c, idx);
        return;
      }
      c->state = C_AWAIT;
      c->off = 0;
      ep(w, EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
      return;
    }
    if (opt.mode == M_CHURN) c->seq++, fill_request(c, idx);
    send_request(w, c, idx);
    return;
  }
  switch (c->state) {
  case C_SENDING:
    send_request(w, c, idx);
    return;
  case C_AWAIT: {
    int size = opt.mode == M_IDLE ? 1 : opt.size;
    ssize_t n = read(c->fd, c->resp + c->off, size - c->off);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      conn_fail(w, c, idx);
      return;
    }
    c->off += (uint32_t)n;
    if (c->off == (uint32_t)size) reply_done(w, c, idx);
    return;
  }
  case C_STREAM:
    if (events & (EPOLLERR | EPOLLHUP)) conn_fail(w, c, idx);
    else bulk_write(w, c, idx);
    return;
  case C_REPORT:
    bulk_report(w, c, idx);
    return;
  case C_HELD:
    conn_fail(w, c, idx);
    return;
  case C_EOF: { /* churn --read-eof: the reply is in; only the peer's FIN may follow */
    char extra[64];
    ssize_t n = read(c->fd, extra, sizeof(extra));
    if (n < 0 && errno == EAGAIN) return;
    if (n > 0) { /* bytes after the reply: the wrong stream */
      w->corrupt++;
      return;
    }
    if (n < 0) {
      conn_fail(w, c, idx);
      return;
    }
    uint64_t t = now_ns();
    record(w, c->t0, t);
    close(c->fd);
    c->fd = -1;
    if (t < w->t_end) start_conn(w, c, idx);
    else c->state = C_DONE;
    return;
  }
  }
}

static int client_busy(struct worker *w) {
  for (int i = 0; i < w->nconns; i++)
    if (w->conns[i].state != C_DONE) return 1;
  return 0;
}

static void print_idle_line(struct worker *w, const char *phase, double ms) {
  printf("{\"mode\":\"idle\",\"phase\":\"%s\",\"conns\":%d,\"established\":%d,\"dropped\":%d,"
         "\"errors\":%llu,\"corrupt\":%llu,\"ms\":%.1f,\"ok\":%s}\n",
         phase, opt.conns, w->established, w->dropped, (unsigned long long)w->errors,
         (unsigned long long)w->corrupt, ms,
         (w->established == opt.conns && !w->errors && !w->corrupt && !w->dropped) ? "true" : "false");
  fflush(stdout);
}

static void *client_thread(void *arg) {
  struct worker *w = arg;
  struct epoll_event evs[MAX_EVENTS];
  int opened = 0;        /* idle: connections started so far */
  int announced = 0;     /* idle: the "established" line was printed */
  uint64_t hold_end = 0; /* idle */
  if (opt.mode == M_IDLE) {
    /* stdin: a line or EOF ends the hold (not pollable when it is /dev/null: then the duration does) */
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(w->epfd, EPOLL_CTL_ADD, 0, &ev);
  } else {
    for (int i = 0; i < w->nconns; i++) start_conn(w, &w->conns[i], i);
    opened = w->nconns;
  }
  for (;;) {
    uint64_t t = now_ns();
    if (t >= w->t_deadline || stop_flag) {
      w->timed_out = t >= w->t_deadline;
      break;
    }
    if (opt.mode == M_IDLE) {
      /* Open in waves of --inflight, so the listen backlog never overflows into SYN retries. */
      int pending = opened - w->established - w->dropped - w->idle_failed;
      while (opened < w->nconns && pending < opt.inflight) {
        start_conn(w, &w->conns[opened], opened);
        opened++;
        pending++;
      }
      if (!announced && opened == w->nconns && pending <= 0) {
        announced = 1;
        print_idle_line(w, "established", (double)(now_ns() - w->t_start) / 1e6);
        hold_end = now_ns() + (uint64_t)(opt.duration * 1e9);
      }
      if (announced && t >= hold_end) break;
    } else if (t >= w->t_end && !client_busy(w)) {
      break;
    }
    int n = epoll_wait(w->epfd, evs, MAX_EVENTS, 5);
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (!c) { /* stdin */
        char buf[256];
        ssize_t r = read(0, buf, sizeof(buf));
        if (r <= 0 || memchr(buf, '\n', (size_t)r)) {
          if (announced) goto out;
          if (r <= 0) epoll_ctl(w->epfd, EPOLL_CTL_DEL, 0, NULL);
        }
        continue;
      }
      client_event(w, c, evs[i].events);
    }
    /* Bulk streams end on time even when the path has stalled them (no EPOLLOUT would come). */
    if (opt.mode == M_BULK && now_ns() >= w->t_end) {
      for (int i = 0; i < w->nconns; i++)
        if (w->conns[i].state == C_STREAM) bulk_write(w, &w->conns[i], i);
    }
    /* After the measured window, rr and churn connections still waiting are closed; bulk ones
     * get until the deadline to deliver their reports. */
    if (opt.mode != M_IDLE && opt.mode != M_BULK && now_ns() >= w->t_end + 200000000ull) {
      for (int i = 0; i < w->nconns; i++)
        if (w->conns[i].state != C_DONE) {
          if (w->conns[i].fd >= 0) close(w->conns[i].fd);
          w->conns[i].fd = -1;
          w->conns[i].state = C_DONE;
        }
    }
  }
out:
  if (opt.mode == M_BULK) {
    for (int i = 0; i < w->nconns; i++)
      if (w->conns[i].state != C_DONE) w->reports_missing++;
  }
  if (opt.mode == M_IDLE && !announced) print_idle_line(w, "established", (double)(now_ns() - w->t_start) / 1e6);
  for (int i = 0; i < w->nconns; i++)
    if (w->conns[i].fd >= 0) close(w->conns[i].fd);
  return NULL;
}

/* ── servers: echo, sink ──────────────────────────────────────────────────── */

/* Per-fd state, indexed by fd (fds are process-wide; each is owned by the thread that accepted it). */
struct sconn {
  uint64_t off;          /* sink: stream offset; echo: bytes echoed (--close-after) */
  uint64_t bad;          /* sink: bytes that broke the pattern */
  unsigned char *pend;   /* echo: bytes the client would not take yet */
  uint32_t pend_len, pend_off;
};
static struct sconn *sconns;
static int max_fd;

static int make_listener(struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(fd, 4096) < 0) {
    perror("loadgen: bind/listen");
    exit(2);
  }
  socklen_t len = sizeof(*addr);
  getsockname(fd, (struct sockaddr *)addr, &len); /* learn the port when it was 0 */
  return fd;
}

static void server_close(struct worker *w, int fd) {
  struct sconn *s = &sconns[fd];
  free(s->pend);
  memset(s, 0, sizeof(*s));
  close(fd);
  (void)w;
}

static void echo_flush(struct worker *w, int fd) {
  struct sconn *s = &sconns[fd];
  while (s->pend_off < s->pend_len) {
    ssize_t n = write(fd, s->pend + s->pend_off, s->pend_len - s->pend_off);
    if (n < 0) {
      if (errno == EAGAIN) return;
      w->errors++;
      server_close(w, fd);
      return;
    }
    s->pend_off += (uint32_t)n;
    s->off += (uint64_t)n;
    w->bytes += (uint64_t)n;
  }
  free(s->pend);
  s->pend = NULL;
  s->pend_len = s->pend_off = 0;
  if (opt.close_after && (long)s->off >= opt.close_after) {
    server_close(w, fd);
    return;
  }
  ep(w, EPOLL_CTL_MOD, fd, EPOLLIN, (void *)(intptr_t)(fd + 1));
}

static void echo_read(struct worker *w, int fd, unsigned char *buf) {
  for (int round = 0; round < 8; round++) {
    ssize_t n = read(fd, buf, IO_BUF);
    if (n < 0) {
      if (errno == EAGAIN) return;
      if (errno != ECONNRESET) w->errors++;
      server_close(w, fd);
      return;
    }
    if (n == 0) {
      server_close(w, fd);
      return;
    }
    ssize_t off = 0;
    while (off < n) {
      ssize_t m = write(fd, buf + off, n - off);
      if (m < 0) {
        if (errno == EAGAIN) break;
        if (errno != ECONNRESET && errno != EPIPE) w->errors++;
        server_close(w, fd);
        return;
      }
      off += m;
      sconns[fd].off += (uint64_t)m;
      w->bytes += (uint64_t)m;
    }
    if (off < n) { /* the client is slow to read: keep the rest, stop reading until it drains */
      struct sconn *s = &sconns[fd];
      s->pend = malloc((size_t)(n - off));
      memcpy(s->pend, buf + off, (size_t)(n - off));
      s->pend_len = (uint32_t)(n - off);
      s->pend_off = 0;
      ep(w, EPOLL_CTL_MOD, fd, EPOLLOUT, (void *)(intptr_t)(fd + 1));
      return;
    }
    /* --close-after: the reply is out; close first (a FIN, as the whole request was read). */
    if (opt.close_after && (long)sconns[fd].off >= opt.close_after) {
      server_close(w, fd);
      return;
    }
    if (n < IO_BUF) return;
  }
}

static void sink_read(struct worker *w, int fd, unsigned char *buf) {
  struct sconn *s = &sconns[fd];
  for (int round = 0; round < 16; round++) {
    ssize_t n = read(fd, buf, IO_BUF);
    if (n < 0) {
      if (errno == EAGAIN) return;
      /* A reset from a health check is not an error; a client that lost bytes finds out itself. */
      if (errno != ECONNRESET) w->errors++;
      server_close(w, fd);
      return;
    }
    if (n == 0) { /* end of stream: tell the client what arrived */
      unsigned char rep[16];
      memcpy(rep, &s->off, 8);
      memcpy(rep + 8, &s->bad, 8);
      /* A health check that connected and closed gets its report too; it may be gone already. */
      if (write(fd, rep, 16) != 16 && s->off) w->errors++;
      w->corrupt += s->bad;
      server_close(w, fd);
      return;
    }
    const unsigned char *want = pattern + s->off % PATTERN_PERIOD;
    if (memcmp(buf, want, (size_t)n) != 0) {
      for (ssize_t i = 0; i < n; i++) s->bad += buf[i] != want[i];
    }
    s->off += (uint64_t)n;
    w->bytes += (uint64_t)n;
  }
}

static void *server_thread(void *arg) {
  struct worker *w = arg;
  struct epoll_event evs[MAX_EVENTS];
  unsigned char *buf = malloc(IO_BUF);
  ep(w, EPOLL_CTL_ADD, w->listen_fd, EPOLLIN, NULL);
  while (!stop_flag) {
    int n = epoll_wait(w->epfd, evs, MAX_EVENTS, 100);
    for (int i = 0; i < n; i++) {
      if (!evs[i].data.ptr) {
        for (;;) {
          int fd = accept4(w->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) w->errors++;
            break;
          }
          if (fd >= max_fd) {
            w->errors++;
            close(fd);
            continue;
          }
          set_nodelay(fd);
          w->accepted++;
          ep(w, EPOLL_CTL_ADD, fd, EPOLLIN, (void *)(intptr_t)(fd + 1));
        }
        continue;
      }
      int fd = (int)(intptr_t)evs[i].data.ptr - 1;
      if (opt.mode == M_ECHO) {
        if (sconns[fd].pend) echo_flush(w, fd);
        else echo_read(w, fd, buf);
      } else {
        sink_read(w, fd, buf);
      }
    }
  }
  free(buf);
  return NULL;
}

/* ── main ─────────────────────────────────────────────────────────────────── */

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void fmt_addr(char *out, size_t len, const struct sockaddr_in *a) {
  char host[32];
  inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
  snprintf(out, len, "%s:%u", host, ntohs(a->sin_port));
}

static int run_servers(void) {
  struct sigaction sa = { .sa_handler = on_signal };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  max_fd = (int)rl.rlim_cur;
  sconns = calloc((size_t)max_fd, sizeof(*sconns));
  for (int i = 0; i < opt.threads; i++) {
    struct worker *w = &workers[i];
    w->id = i;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->listen_fd = make_listener(&opt.listen); /* the first learns the port; the others share it */
  }
  char addr[64];
  fmt_addr(addr, sizeof(addr), &opt.listen);
  printf("{\"mode\":\"%s\",\"phase\":\"ready\",\"listen\":\"%s\",\"threads\":%d,\"pid\":%d}\n",
         MODE_NAMES[opt.mode], addr, opt.threads, (int)getpid());
  fflush(stdout);
  for (int i = 0; i < opt.threads; i++) pthread_create(&workers[i].tid, NULL, server_thread, &workers[i]);
  uint64_t bytes = 0, errors = 0, corrupt = 0, accepted = 0;
  for (int i = 0; i < opt.threads; i++) {
    pthread_join(workers[i].tid, NULL);
    bytes += workers[i].bytes;
    errors += workers[i].errors;
    corrupt += workers[i].corrupt;
    accepted += workers[i].accepted;
  }
  printf("{\"mode\":\"%s\",\"phase\":\"done\",\"accepted\":%llu,\"bytes\":%llu,\"errors\":%llu,\"corrupt\":%llu,"
         "\"cpu_s\":%.3f,\"ok\":%s}\n",
         MODE_NAMES[opt.mode], (unsigned long long)accepted, (unsigned long long)bytes,
         (unsigned long long)errors, (unsigned long long)corrupt, cpu_seconds(),
         errors || corrupt ? "false" : "true");
  return 0;
}

static int run_clients(void) {
  struct sigaction sa = { .sa_handler = on_signal };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  uint64_t t0 = now_ns();
  uint64_t t_measure = t0 + (uint64_t)(opt.warmup * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(opt.duration * 1e9);
  uint64_t t_deadline = t0 + (uint64_t)(opt.timeout * 1e9);
  int per = opt.conns / opt.threads, extra = opt.conns % opt.threads;
  for (int i = 0; i < opt.threads; i++) {
    struct worker *w = &workers[i];
    w->id = i;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->nconns = per + (i < extra);
    w->conns = calloc((size_t)w->nconns, sizeof(struct conn));
    for (int k = 0; k < w->nconns; k++) {
      struct conn *c = &w->conns[k];
      c->fd = -1;
      c->state = C_FREE;
      c->req = calloc(1, (size_t)opt.size + 16);
      c->resp = calloc(1, (size_t)opt.size + 16);
      fill_request(c, k);
    }
    w->t_start = t0;
    w->t_measure = t_measure;
    w->t_end = opt.mode == M_IDLE ? t_deadline : t_end;
    w->t_deadline = t_deadline;
  }
  for (int i = 0; i < opt.threads; i++) pthread_create(&workers[i].tid, NULL, client_thread, &workers[i]);
  static uint64_t hist[HBUCKETS];
  uint64_t count = 0, total = 0, connected = 0, errors = 0, corrupt = 0, bytes = 0, sent = 0, missing = 0, t_last = 0;
  int timed_out = 0, established = 0, dropped = 0;
  for (int i = 0; i < opt.threads; i++) {
    struct worker *w = &workers[i];
    pthread_join(w->tid, NULL);
    for (int b = 0; b < HBUCKETS; b++) hist[b] += w->hist[b];
    count += w->count;
    total += w->total;
    connected += w->connected;
    errors += w->errors;
    corrupt += w->corrupt;
    bytes += w->bytes;
    sent += w->sent;
    missing += w->reports_missing;
    if (w->t_last > t_last) t_last = w->t_last;
    timed_out |= w->timed_out;
    established += w->established;
    dropped += w->dropped;
  }
  char target[64];
  fmt_addr(target, sizeof(target), &opt.targets[0]);
  if (opt.mode == M_IDLE) {
    printf("{\"mode\":\"idle\",\"phase\":\"done\",\"conns\":%d,\"established\":%d,\"dropped\":%d,\"errors\":%llu,"
           "\"timed_out\":%s,\"ok\":%s}\n",
           opt.conns, established, dropped, (unsigned long long)errors, timed_out ? "true" : "false",
           (!errors && !dropped && !timed_out) ? "true" : "false");
    return 0;
  }
  int ok = !errors && !corrupt && !timed_out && !missing;
  if (opt.mode == M_BULK) {
    double secs = t_last > t0 ? (double)(t_last - t0) / 1e9 : opt.duration;
    printf("{\"mode\":\"bulk\",\"target\":\"%s\",\"targets\":%d,\"conns\":%d,\"threads\":%d,\"size\":%d,"
           "\"seconds\":%.3f,\"sent\":%llu,\"received\":%llu,\"gbit_s\":%.3f,\"errors\":%llu,\"corrupt\":%llu,"
           "\"reports_missing\":%llu,\"timed_out\":%s,\"cpu_s\":%.3f,\"ok\":%s}\n",
           target, opt.ntargets, opt.conns, opt.threads, opt.size, secs, (unsigned long long)sent,
           (unsigned long long)bytes, (double)bytes * 8 / secs / 1e9, (unsigned long long)errors,
           (unsigned long long)corrupt, (unsigned long long)missing, timed_out ? "true" : "false", cpu_seconds(),
           ok && bytes == sent ? "true" : "false");
    return 0;
  }
  double secs = opt.duration;
  double sum = 0;
  for (int b = 0; b < HBUCKETS; b++) sum += hval(b) * (double)hist[b];
  int maxb = 0;
  for (int b = 0; b < HBUCKETS; b++)
    if (hist[b]) maxb = b;
  printf("{\"mode\":\"%s\",\"target\":\"%s\",\"targets\":%d,\"conns\":%d,\"threads\":%d,\"size\":%d,"
         "\"seconds\":%.3f,\"count\":%llu,\"total\":%llu,\"connected\":%llu,\"per_s\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
         "\"p999_us\":%.1f,\"max_us\":%.1f,\"errors\":%llu,\"corrupt\":%llu,\"timed_out\":%s,\"cpu_s\":%.3f,\"ok\":%s}\n",
         MODE_NAMES[opt.mode], target, opt.ntargets, opt.conns, opt.threads, opt.size, secs,
         (unsigned long long)count, (unsigned long long)total, (unsigned long long)connected, (double)count / secs, count ? sum / (double)count / 1e3 : 0,
         hpercentile(hist, count, 0.50) / 1e3, hpercentile(hist, count, 0.90) / 1e3, hpercentile(hist, count, 0.99) / 1e3,
         hpercentile(hist, count, 0.999) / 1e3, count ? hval(maxb) / 1e3 : 0, (unsigned long long)errors,
         (unsigned long long)corrupt, timed_out ? "true" : "false", cpu_seconds(),
         ok && count > 0 ? "true" : "false");
  return 0;
}

int main(int argc, char **argv) {
  parse_args(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  /* Use every descriptor we are allowed: idle runs hold thousands. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  pattern = malloc(PATTERN_PERIOD + IO_BUF);
  for (int i = 0; i < PATTERN_PERIOD + IO_BUF; i++) pattern[i] = (unsigned char)(i % PATTERN_PERIOD);
  workers = calloc((size_t)opt.threads, sizeof(struct worker));
  if (opt.mode >= M_ECHO) return run_servers();
  return run_clients();
}
