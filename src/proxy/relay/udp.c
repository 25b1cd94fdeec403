/*
 * UDP services in the relay: the datagrams of a flow move here, in batches, without a call into
 * JavaScript per datagram. JavaScript keeps every decision, as for TCP: the first datagram of a
 * new client address and port goes up (EV_UDP_NEW) and waits, held here, until the session core
 * has admitted and picked (WASM) and says which backend (udpConnect) — or refuses (udpClose).
 *
 *   service socket ─ recvmmsg (≤ batch) ─▶ flow lookup (client address, port) ─▶ send on the
 *     flow's socket, connected to its backend (with the flow's PROXY v2 header in front: sendmsg)
 *   flow socket ─ recv ─▶ queued ─▶ sendmmsg on the service socket, at the end of the wake
 *
 * - One connected socket per flow: the kernel filters what comes back, a reply maps to its flow
 *   by the socket's epoll key (no lookup), and an ICMP port unreachable comes back as
 *   ECONNREFUSED on it: EV_UDP_FAILED, the core's failed connect (passive health, another
 *   backend); the datagrams still unanswered (held, below) go to the next backend.
 * - With SO_REUSEPORT the kernel hashes a client's address and port to one worker's service
 *   socket, so a flow lives in one relay, one thread: nothing here is shared between threads.
 * - Per datagram, the flow's backend state is read from the shared memory: a backend no longer up
 *   or draining (down, maint) ends the flow (EV_UDP_ENDED, END_MOVED) and the datagram starts a
 *   new one; JS marks a removed backend's flows the same way (udpMove).
 * - Counters: per datagram into the shared memory (the service's and the backend's datagrams and
 *   drops, one writer: this worker's slots), per flow into the stats array (bytes, datagrams,
 *   activity: the core's log line, byte counters and idle timeout).
 * - The PROXY v2 header is made once per flow by the core (proxy-protocol.ts, the one formatter)
 *   and copied here; idle expiry is the core's sweep (STAT_ACTIVITY), `udp.responses` is counted
 *   here (EV_UDP_ENDED, END_SERVER).
 * - A datagram over the service's max_datagram is dropped and counted either way.
 */
#include "relay.h"
#include <fcntl.h>

#include <sys/random.h>
#include <sys/uio.h>

/* A datagram's room in the batch buffers: the largest UDP payload fits (65,507 over IPv4). */
#define UDP_BUF 65536
/* Datagrams a flow holds at most while it waits for a backend (its first, or the next after an
   ICMP unreachable): a whole batch from one client. Once sent, only the last is kept (keep_last). */
#define UDP_HELD_MAX UDP_MAX_BATCH
#define NO_SLOT UINT32_MAX

typedef union {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
} Addr;

/* A datagram kept for the flow's (next) backend. */
typedef struct Held {
  struct Held *next;
  uint32_t len;
  uint8_t data[];
} Held;

typedef struct UFlow {
  struct UFlow *hnext; /* the hash chain */
  Addr client;
  uint32_t hash;
  uint32_t lid;
  uint32_t slot;     /* NO_SLOT while pending */
  uint32_t pid;      /* its pending id while pending */
  int fd;            /* connected to its backend, -1 before udpConnect */
  int32_t state_idx; /* i32 index of its backend's B_STATE in the shared memory */
  int32_t bc;        /* f64 index of its backend's counters (this worker's) */
  uint32_t replies;
  uint8_t connected; /* datagrams go out (0: pending, or failed and waiting for the next backend) */
  uint8_t failed;    /* EV_UDP_FAILED was pushed, udpConnect or udpClose not yet called */
  uint8_t moved;     /* udpMove: the next datagram ends it and starts a new flow */
  uint8_t answered;  /* a reply came: the held datagrams are dropped, none kept from now */
  uint16_t hdr_len;
  uint16_t nheld;
  uint8_t *hdr;      /* the PROXY v2 header, or NULL */
  Held *held, **held_tail;
} UFlow;

typedef struct {
  int fd; /* -1: free */
  Addr bound;
  int32_t max_datagram;
  int32_t responses;
  int32_t sc; /* f64 index of the service's counters (this worker's), -1 before udpConfigure */
} UListener;

/* A reply waiting for the end of the wake's sendmmsg. */
typedef struct {
  int fd; /* the service socket */
  Addr to;
  socklen_t tolen;
  uint32_t len;
} Out;

typedef struct Udp {
  double *f64;     /* the shared memory, as f64 (counters) … */
  int32_t *i32;    /* … and as i32 (backend states) */
  size_t mem_len;  /* in f64 units */
  napi_ref mem_ref;
  uint32_t batch;  /* datagrams per recvmmsg / sendmmsg */
  uint32_t seed;   /* the flow hash's, random per relay: clients choose their addresses and ports */
  UListener *ls;
  uint32_t nls;
  UFlow **buckets; /* the flows by client address and port (and listener) */
  uint32_t nbuckets, nflows;
  UFlow **by_slot;
  uint32_t nby_slot;
  UFlow **pending; /* by pending id */
  uint32_t npending;
  uint32_t *free_pids;
  uint32_t nfree_pids;
  /* recvmmsg's batch */
  struct mmsghdr in[UDP_MAX_BATCH];
  struct iovec in_iov[UDP_MAX_BATCH];
  Addr in_from[UDP_MAX_BATCH];
  uint8_t *in_buf;  /* UDP_MAX_BATCH × UDP_BUF: touched only as far as datagrams reach */
  /* the replies of this wake */
  Out out[UDP_MAX_BATCH];
  struct mmsghdr out_msg[UDP_MAX_BATCH];
  struct iovec out_iov[UDP_MAX_BATCH];
  uint32_t nout;
  uint8_t *out_buf;
} Udp;

static inline socklen_t addr_len(const Addr *a) {
  return a->sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static inline int same_client(const Addr *a, const Addr *b) {
  if (a->sa.sa_family != b->sa.sa_family) return 0;
  if (a->sa.sa_family == AF_INET) return a->v4.sin_port == b->v4.sin_port && a->v4.sin_addr.s_addr == b->v4.sin_addr.s_addr;
  return a->v6.sin6_port == b->v6.sin6_port && memcmp(&a->v6.sin6_addr, &b->v6.sin6_addr, 16) == 0;
}

/* HOT: per datagram from a client. FNV-1a over the address and port, from a random seed, with the listener id. */
static uint32_t hash_client(const Addr *a, uint32_t lid, uint32_t seed) {
  uint32_t h = (2166136261u ^ seed) + lid * 16777619u;
  const uint8_t *p;
  size_t n;
  uint16_t port;
  if (a->sa.sa_family == AF_INET) {
    p = (const uint8_t *)&a->v4.sin_addr;
    n = 4;
    port = a->v4.sin_port;
  } else {
    p = (const uint8_t *)&a->v6.sin6_addr;
    n = 16;
    port = a->v6.sin6_port;
  }
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  h = (h ^ (port & 0xff)) * 16777619u;
  h = (h ^ (port >> 8)) * 16777619u;
  return h;
}

static UFlow *find_flow(Udp *u, const Addr *a, uint32_t lid, uint32_t h) {
  if (u->nbuckets == 0) return NULL;
  for (UFlow *f = u->buckets[h & (u->nbuckets - 1)]; f != NULL; f = f->hnext) {
    if (f->hash == h && f->lid == lid && same_client(&f->client, a)) return f;
  }
  return NULL;
}

/* Doubles the buckets when the flows outnumber them (once per doubling). 0 if out of memory. */
static int grow_buckets(Udp *u) {
  uint32_t n = u->nbuckets == 0 ? 1024 : u->nbuckets * 2;
  UFlow **b = calloc(n, sizeof(UFlow *));
  if (b == NULL) return 0;
  for (uint32_t i = 0; i < u->nbuckets; i++) {
    for (UFlow *f = u->buckets[i], *next; f != NULL; f = next) {
      next = f->hnext;
      f->hnext = b[f->hash & (n - 1)];
      b[f->hash & (n - 1)] = f;
    }
  }
  free(u->buckets);
  u->buckets = b;
  u->nbuckets = n;
  return 1;
}

static void unlink_flow(Udp *u, UFlow *f) {
  UFlow **p = &u->buckets[f->hash & (u->nbuckets - 1)];
  while (*p != f) p = &(*p)->hnext;
  *p = f->hnext;
  u->nflows--;
}

static void drop_held(UFlow *f) {
  for (Held *h = f->held, *next; h != NULL; h = next) {
    next = h->next;
    free(h);
  }
  f->held = NULL;
  f->held_tail = &f->held;
  f->nheld = 0;
}

/*
 * After the held datagrams went to a backend: only the last stays, for the next backend if this
 * one answers ICMP unreachable (as the JavaScript path sends its last datagram again).
 */
static void keep_last(UFlow *f) {
  while (f->held != NULL && f->held->next != NULL) {
    Held *h = f->held;
    f->held = h->next;
    free(h);
    f->nheld--;
  }
}

/* Keeps a datagram for the flow's (next) backend: 1, or 0 if it holds its most already (or no memory). */
static int hold_datagram(UFlow *f, const uint8_t *data, uint32_t len) {
  if (f->nheld >= UDP_HELD_MAX) return 0;
  Held *h = malloc(sizeof(Held) + len);
  if (h == NULL) return 0;
  h->next = NULL;
  h->len = len;
  memcpy(h->data, data, len);
  *f->held_tail = h;
  f->held_tail = &h->next;
  f->nheld++;
  return 1;
}

/* Frees a flow: out of the table, its socket closed, its slot or pending id free. No event. */
static void free_flow(Relay *r, UFlow *f) {
  Udp *u = r->udp;
  unlink_flow(u, f);
  if (f->slot != NO_SLOT) {
    u->by_slot[f->slot] = NULL;
  } else {
    u->pending[f->pid] = NULL;
    u->free_pids[u->nfree_pids++] = f->pid;
  }
  /* Out of the epoll set before the close: a process fulcrum forks holds a copy of every fd until
     its exec, and close() alone leaves the registration while a copy lives (loop.c free_session). */
  if (f->fd >= 0) {
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, f->fd, NULL);
    close_fd(r, f->fd);
  }
  drop_held(f);
  free(f->hdr);
  free(f);
  ref_down(r);
}

/* HOT (per new flow): a pending flow for a client's first datagram; NULL if out of memory. */
static UFlow *new_flow(Relay *r, const Addr *from, uint32_t lid, uint32_t h) {
  Udp *u = r->udp;
  if (u->nflows >= u->nbuckets && !grow_buckets(u)) return NULL;
  if (u->nfree_pids == 0) {
    uint32_t n = u->npending == 0 ? 64 : u->npending * 2;
    UFlow **p = realloc(u->pending, n * sizeof(UFlow *));
    if (p == NULL) return NULL;
    u->pending = p;
    uint32_t *fp = realloc(u->free_pids, n * sizeof(uint32_t));
    if (fp == NULL) return NULL;
    u->free_pids = fp;
    for (uint32_t i = n; i > u->npending; i--) {
      u->pending[i - 1] = NULL;
      u->free_pids[u->nfree_pids++] = i - 1;
    }
    u->npending = n;
  }
  UFlow *f = calloc(1, sizeof(UFlow));
  if (f == NULL) return NULL;
  f->client = *from;
  f->hash = h;
  f->lid = lid;
  f->slot = NO_SLOT;
  f->pid = u->free_pids[--u->nfree_pids];
  f->fd = -1;
  f->state_idx = -1;
  f->bc = -1;
  f->held_tail = &f->held;
  u->pending[f->pid] = f;
  f->hnext = u->buckets[h & (u->nbuckets - 1)];
  u->buckets[h & (u->nbuckets - 1)] = f;
  u->nflows++;
  ref_up(r);
  return f;
}

/* Room in the events array for one datagram's events (a flow ended, a new one) and the rest of the wake's. */
static inline int room_for_datagram(Relay *r) {
  return (size_t)(r->nev + 2 + 2 * MAX_EVENTS + 1) * EV_FIELDS <= r->events_len;
}

static inline double *flow_stats(Relay *r, UFlow *f) {
  return r->stats + (size_t)f->slot * STAT_FIELDS;
}

/* Sends one datagram to the flow's backend (its header first). 0, or the errno (EAGAIN: lost, as the network may). */
static int send_to_backend(UFlow *f, const uint8_t *data, uint32_t len) {
  ssize_t w;
  if (f->hdr == NULL) {
    w = send(f->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  } else {
    struct iovec iov[2] = {{f->hdr, f->hdr_len}, {(void *)data, len}};
    struct msghdr m = {0};
    m.msg_iov = iov;
    m.msg_iovlen = 2;
    w = sendmsg(f->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  return w < 0 ? errno : 0;
}

/*
 * The flow's backend is unreachable (ECONNREFUSED: an ICMP port unreachable; or another error
 * on its socket): it stops sending and tells JS once, which connects it to another backend or
 * closes it. Once per failure.
 */
static void flow_failed(Relay *r, UFlow *f, int err) {
  f->connected = 0;
  if (f->failed) return;
  f->failed = 1;
  push_event(r, EV_UDP_FAILED, f->slot, -err);
}

/* HOT: once per datagram from a client to a flow with a backend. */
static void to_backend(Relay *r, UListener *l, UFlow *f, const uint8_t *data, uint32_t len) {
  double *m = r->udp->f64;
  int err = send_to_backend(f, data, len);
  if (err == ECONNREFUSED || (err != 0 && err != EAGAIN && err != EWOULDBLOCK && err != ENOBUFS)) {
    /* An earlier datagram's ICMP unreachable, reported on this send: this one waits for the next backend. */
    if (!hold_datagram(f, data, len) && l->sc >= 0) m[l->sc + SC_DROP_UNREACHABLE] += 1;
    flow_failed(r, f, err);
    return;
  }
  double *st = flow_stats(r, f);
  st[STAT_BYTES_IN] += len;
  st[STAT_DGRAMS_IN] += 1;
  st[STAT_ACTIVITY] += 1;
  if (l->sc >= 0) m[l->sc + SC_DGRAMS_IN] += 1;
  m[f->bc + BC_DGRAMS_IN] += 1;
}

/* Whether the flow's backend still takes its datagrams: up, or draining (drain keeps flows). HOT: per datagram. */
static inline int backend_serves(Udp *u, UFlow *f) {
  int32_t st = __atomic_load_n(&u->i32[f->state_idx], __ATOMIC_RELAXED);
  return st == BACKEND_UP || st == BACKEND_DRAIN;
}

/* HOT: once per datagram read from a service socket. */
static void from_client(Relay *r, uint32_t lid, UListener *l, const Addr *from, const uint8_t *data, uint32_t len) {
  Udp *u = r->udp;
  if ((int32_t)len > l->max_datagram) {
    if (l->sc >= 0) u->f64[l->sc + SC_DROP_OVERSIZED] += 1;
    return;
  }
  uint32_t h = hash_client(from, lid, u->seed);
  UFlow *f = find_flow(u, from, lid, h);
  if (f != NULL && f->connected && (f->moved || !backend_serves(u, f))) {
    /* Down, maint or removed: this flow ends and the datagram makes a new one (a new pick). */
    push_event(r, EV_UDP_ENDED, f->slot, END_MOVED);
    free_flow(r, f);
    f = NULL;
  }
  if (f == NULL) {
    f = new_flow(r, from, lid, h);
    if (f == NULL) {
      if (l->sc >= 0) u->f64[l->sc + SC_DROP_LIMIT] += 1; /* no memory for it here */
      return;
    }
    int32_t *e = push_event(r, EV_UDP_NEW, lid, (int32_t)f->pid);
    /* As encode_address (loop.c) writes an accepted client's: family << 16 | port, address bytes. */
    int32_t addr[5] = {0};
    if (from->sa.sa_family == AF_INET6) {
      addr[0] = (6 << 16) | ntohs(from->v6.sin6_port);
      memcpy(&addr[1], &from->v6.sin6_addr, 16);
    } else {
      addr[0] = (4 << 16) | ntohs(from->v4.sin_port);
      memcpy(&addr[1], &from->v4.sin_addr, 4);
    }
    memcpy(&e[EV_B], addr, sizeof(addr));
  }
  if (f->connected) {
    to_backend(r, l, f, data, len);
    return;
  }
  /* Pending (or failed, waiting for its next backend): kept for udpConnect, up to UDP_HELD_MAX. */
  if (!hold_datagram(f, data, len) && l->sc >= 0) u->f64[l->sc + (f->failed ? SC_DROP_UNREACHABLE : SC_DROP_LIMIT)] += 1;
}

/* HOT: a service socket is readable: up to `batch` datagrams per recvmmsg, as long as the events have room. */
void udp_on_listener(Relay *r, uint32_t lid, int fd) {
  Udp *u = r->udp;
  if (u == NULL || lid >= u->nls || u->ls[lid].fd != fd) {
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    return;
  }
  /* Rounds: a full batch may have more behind it (level-triggered: what is left wakes the next poll). */
  for (int round = 0; round < 4; round++) {
    /* Two events per datagram at most (a moved flow's end, a new flow), leaving the wake's other epoll events theirs. */
    int64_t room = ((int64_t)(r->events_len / EV_FIELDS) - (2 * MAX_EVENTS + 1) - (int64_t)r->nev) / 2;
    if (room <= 0) return;
    uint32_t want = (int64_t)u->batch < room ? u->batch : (uint32_t)room;
    /* The headers point at fixed buffers (udpInit); the kernel rewrites only the address length. */
    for (uint32_t i = 0; i < want; i++) u->in[i].msg_hdr.msg_namelen = sizeof(Addr);
    int n = recvmmsg(fd, u->in, want, MSG_DONTWAIT, NULL);
    if (n <= 0) return; /* EAGAIN; a service socket's other errors are per datagram sent (a client gone) */
    for (int i = 0; i < n; i++) {
      if (!room_for_datagram(r)) return; /* cannot happen (want ≤ room); kept as the array's guard */
      uint32_t len = u->in[i].msg_len;
      if (u->in[i].msg_hdr.msg_flags & MSG_TRUNC) len = UDP_BUF; /* over any max_datagram: dropped */
      from_client(r, lid, &u->ls[lid], &u->in_from[i], u->in_buf + (size_t)i * UDP_BUF, len);
      /* A flow's last send may have closed it: the listener is still ours (closed only by JS). */
    }
    if ((uint32_t)n < want) return;
  }
}

/* Sends the replies queued this wake: one sendmmsg per run of the same service socket. */
void udp_flush(Relay *r) {
  Udp *u = r->udp;
  uint32_t i = 0;
  while (i < u->nout) {
    uint32_t j = i;
    while (j < u->nout && u->out[j].fd == u->out[i].fd) {
      struct msghdr *m = &u->out_msg[j].msg_hdr;
      u->out_iov[j].iov_base = u->out_buf + (size_t)j * UDP_BUF;
      u->out_iov[j].iov_len = u->out[j].len;
      m->msg_name = &u->out[j].to;
      m->msg_namelen = u->out[j].tolen;
      m->msg_iov = &u->out_iov[j];
      m->msg_iovlen = 1;
      m->msg_control = NULL;
      m->msg_controllen = 0;
      m->msg_flags = 0;
      j++;
    }
    uint32_t k = i;
    while (k < j) {
      int sent = sendmmsg(u->out[i].fd, &u->out_msg[k], j - k, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (sent > 0) {
        k += (uint32_t)sent;
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      /* The socket's buffer is full (EAGAIN) or the datagram was refused: lost, as on a network. Skip it. */
      k++;
    }
    i = j;
  }
  u->nout = 0;
}

/* HOT: a flow's socket is readable (replies) or has an error (ICMP unreachable). */
void udp_on_flow(Relay *r, uint32_t slot, int fd, uint32_t events) {
  Udp *u = r->udp;
  UFlow *f = u != NULL && slot < u->nby_slot ? u->by_slot[slot] : NULL;
  if (f == NULL || f->fd != fd) {
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    return;
  }
  (void)events;
  UListener *l = &u->ls[f->lid];
  double *m = u->f64;
  /* A few replies per wake and flow, so one chatty backend does not starve the others. */
  for (int i = 0; i < 16; i++) {
    if (u->nout == u->batch) udp_flush(r);
    uint8_t *buf = u->out_buf + (size_t)u->nout * UDP_BUF;
    ssize_t n = recv(fd, buf, UDP_BUF, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      if (errno == ECONNREFUSED && l->sc >= 0) {
        m[l->sc + SC_DROP_UNREACHABLE] += 1;
        m[f->bc + BC_DROP_UNREACHABLE] += 1;
      }
      flow_failed(r, f, errno);
      return;
    }
    if (!f->connected) continue; /* failed meanwhile: JS decides first */
    if (n > l->max_datagram) {
      if (l->sc >= 0) m[l->sc + SC_DROP_OVERSIZED] += 1;
      m[f->bc + BC_DROP_OVERSIZED] += 1;
      continue;
    }
    if (!f->answered) {
      f->answered = 1; /* the backend is there: nothing to send again elsewhere */
      drop_held(f);
    }
    Out *o = &u->out[u->nout++];
    o->fd = l->fd;
    o->to = f->client;
    o->tolen = addr_len(&f->client);
    o->len = (uint32_t)n;
    double *st = flow_stats(r, f);
    st[STAT_BYTES_OUT] += (double)n;
    st[STAT_DGRAMS_OUT] += 1;
    st[STAT_ACTIVITY] += 1;
    if (l->sc >= 0) m[l->sc + SC_DGRAMS_OUT] += 1;
    m[f->bc + BC_DGRAMS_OUT] += 1;
    if (u->batch == 1) udp_flush(r);
    if (l->responses > 0 && ++f->replies >= (uint32_t)l->responses) {
      /* udp.responses reached (DNS-like): the reply is queued, the flow ends. */
      push_event(r, EV_UDP_ENDED, f->slot, END_SERVER);
      free_flow(r, f);
      return;
    }
  }
}

void udp_cleanup(Relay *r) {
  Udp *u = r->udp;
  if (u == NULL) return;
  for (uint32_t i = 0; i < u->nbuckets; i++) {
    for (UFlow *f = u->buckets[i], *next; f != NULL; f = next) {
      next = f->hnext;
      if (f->fd >= 0) close(f->fd);
      drop_held(f);
      free(f->hdr);
      free(f);
    }
  }
  for (uint32_t i = 0; i < u->nls; i++) if (u->ls[i].fd >= 0) close(u->ls[i].fd);
  if (u->mem_ref != NULL) napi_delete_reference(r->env, u->mem_ref);
  free(u->buckets);
  free(u->by_slot);
  free(u->pending);
  free(u->free_pids);
  free(u->ls);
  free(u->in_buf);
  free(u->out_buf);
  free(u);
  r->udp = NULL;
}

/* A seed when getrandom has none to give yet (early boot): the clock's nanoseconds. */
static uint64_t now_seed(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
}

/* ── N-API ─────────────────────────────────────────────────────────────────── */

static Udp *udp_of(napi_env env, Relay *r) {
  if (r->udp == NULL) throw_msg(env, "relay: udpInit() first");
  return r->udp;
}

/* udpInit(memory: Float64Array over the shared memory, batch): once per worker, before any UDP listener. */
napi_value js_udp_init(napi_env env, napi_callback_info info) {
  Relay *r;
  void *mem;
  size_t len;
  int32_t batch;
  napi_value mem_v;
  if (!args(env, info, &r, "udpInit(memory: Float64Array, batch)", "vi", &mem_v, &batch)) return NULL;
  if (napi_get_typedarray_info(env, mem_v, NULL, &len, &mem, NULL, NULL) != napi_ok || batch < 1 || batch > UDP_MAX_BATCH) {
    return throw_msg(env, "relay: udpInit(memory: Float64Array, batch 1..UDP_MAX_BATCH) expected");
  }
  napi_typedarray_type type;
  napi_get_typedarray_info(env, mem_v, &type, NULL, NULL, NULL, NULL);
  if (type != napi_float64_array) return throw_msg(env, "relay: udpInit(memory: Float64Array, batch) expected");
  if (r->udp != NULL) return throw_msg(env, "relay: udpInit() was called twice in this thread");
  Udp *u = calloc(1, sizeof(Udp));
  if (u == NULL) return throw_msg(env, "relay: out of memory");
  u->in_buf = malloc((size_t)UDP_MAX_BATCH * UDP_BUF);
  u->out_buf = malloc((size_t)UDP_MAX_BATCH * UDP_BUF);
  if (u->in_buf == NULL || u->out_buf == NULL) {
    free(u->in_buf);
    free(u->out_buf);
    free(u);
    return throw_msg(env, "relay: out of memory");
  }
  /* recvmmsg's headers, set once: datagram i lands in in_buf's slot i, its source in in_from[i]. */
  for (uint32_t i = 0; i < UDP_MAX_BATCH; i++) {
    u->in_iov[i].iov_base = u->in_buf + (size_t)i * UDP_BUF;
    u->in_iov[i].iov_len = UDP_BUF;
    struct msghdr *m = &u->in[i].msg_hdr;
    m->msg_name = &u->in_from[i];
    m->msg_iov = &u->in_iov[i];
    m->msg_iovlen = 1; /* msg_control NULL and the rest 0: calloc */
  }
  u->f64 = mem;
  u->i32 = mem;
  u->mem_len = len;
  u->batch = (uint32_t)batch;
  if (getrandom(&u->seed, sizeof(u->seed), GRND_NONBLOCK) != (ssize_t)sizeof(u->seed)) u->seed = (uint32_t)now_seed();
  napi_create_reference(env, mem_v, 1, &u->mem_ref);
  r->udp = u;
  return NULL;
}

/* udpListen(ip, port, family, reusePort, adoptFd) → a UDP listener id, or a negative errno (adoptFd ≥ 0: a socket handed over, below). */
napi_value js_udp_listen(napi_env env, napi_callback_info info) {
  Relay *r;
  struct sockaddr_storage ss;
  socklen_t len;
  int valid;
  bool reuse;
  int32_t adopt;
  Udp *u = args(env, info, &r, "udpListen(ip, port, family, reusePort, adoptFd)", "Abi", &ss, &len, &valid, &reuse, &adopt) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  if (!valid) return int_value(env, -EINVAL);
  /* adoptFd ≥ 0: a bound datagram socket the previous fulcrum handed over (`fulcrum upgrade`,
     src/control/upgrade.ts) is used as it is, same address, same queue. Refused (-EBADF: one of
     this relay's already; -EINVAL: not a datagram socket) it is left alone, as js_adopt does. */
  if (adopt >= 0) {
    int type = 0;
    socklen_t tn = sizeof(type);
    if (!fd_is(r, adopt, FD_NONE)) return int_value(env, -EBADF);
    if (getsockopt(adopt, SOL_SOCKET, SO_TYPE, &type, &tn) != 0) return int_value(env, -errno);
    if (type != SOCK_DGRAM) return int_value(env, -EINVAL);
    int flags = fcntl(adopt, F_GETFL);
    if (flags < 0 || fcntl(adopt, F_SETFL, flags | O_NONBLOCK) != 0 || fcntl(adopt, F_SETFD, FD_CLOEXEC) != 0) return int_value(env, -errno);
  }
  uint32_t lid = 0;
  while (lid < u->nls && u->ls[lid].fd >= 0) lid++;
  if (lid == u->nls) {
    uint32_t n = u->nls == 0 ? 8 : u->nls * 2;
    UListener *grown = realloc(u->ls, n * sizeof(UListener));
    if (grown == NULL) return int_value(env, -ENOMEM);
    for (uint32_t i = u->nls; i < n; i++) grown[i].fd = -1;
    u->ls = grown;
    u->nls = n;
  }
  int fd = adopt >= 0 ? adopt : socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_value(env, -errno);
  int on = 1;
  if (adopt < 0 && reuse && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) goto fail;
  if (adopt < 0 && bind(fd, (struct sockaddr *)&ss, len) != 0) goto fail;
  UListener *l = &u->ls[lid];
  socklen_t blen = sizeof(l->bound);
  if (getsockname(fd, &l->bound.sa, &blen) != 0) goto fail;
  struct epoll_event e;
  e.events = EPOLLIN;
  e.data.u64 = key_of(lid, UDP_LISTENER, fd);
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &e) != 0) goto fail;
  if (!track_fd(r, fd, FD_OWN)) {
    errno = ENOMEM;
    goto fail;
  }
  l->fd = fd;
  l->max_datagram = 65507;
  l->responses = 0;
  l->sc = -1;
  ref_up(r);
  return int_value(env, (int32_t)lid);
fail:
  if (adopt >= 0) return int_value(env, -errno); /* not ours to close: the caller still holds it */
  return close_failed(env, r, fd);
}

static UListener *udp_listener(Udp *u, uint32_t lid) {
  return lid < u->nls && u->ls[lid].fd >= 0 ? &u->ls[lid] : NULL;
}

/* udpListenerFd(id) → the listener's fd (what `fulcrum upgrade` hands to the next process), or -EBADF. */
napi_value js_udp_listener_fd(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  Udp *u = args(env, info, &r, "udpListenerFd(id)", "l", &lid) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  UListener *l = udp_listener(u, lid);
  return int_value(env, l != NULL ? l->fd : -EBADF);
}

/* udpConfigure(id, maxDatagram, responses, serviceCounters): the service's settings (at listen, and per reload). */
napi_value js_udp_configure(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  int32_t max, responses, sc;
  Udp *u = args(env, info, &r, "udpConfigure(id, maxDatagram, responses, serviceCounters)", "liii", &lid, &max, &responses, &sc) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  if (sc < 0 || (size_t)sc + SERVICE_COUNTERS > u->mem_len) return throw_msg(env, "relay: udpConfigure: serviceCounters outside the memory");
  UListener *l = udp_listener(u, lid);
  if (l == NULL) return NULL;
  l->max_datagram = max;
  l->responses = responses;
  l->sc = sc;
  return NULL;
}

/* udpCloseListener(id): closes a service socket; flows JS has not closed yet go with it (no event). */
napi_value js_udp_close_listener(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  Udp *u = args(env, info, &r, "udpCloseListener(id)", "l", &lid) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  UListener *l = udp_listener(u, lid);
  if (l == NULL) return NULL;
  for (uint32_t i = 0; i < u->nbuckets; i++) {
    for (UFlow *f = u->buckets[i], *next; f != NULL; f = next) {
      next = f->hnext;
      if (f->lid == lid) free_flow(r, f);
    }
  }
  /* Replies queued for it this wake are dropped with it. */
  uint32_t kept = 0;
  for (uint32_t i = 0; i < u->nout; i++) {
    if (u->out[i].fd == l->fd) continue;
    if (kept != i) {
      u->out[kept] = u->out[i];
      memcpy(u->out_buf + (size_t)kept * UDP_BUF, u->out_buf + (size_t)i * UDP_BUF, u->out[i].len);
    }
    kept++;
  }
  u->nout = kept;
  epoll_ctl(r->epfd, EPOLL_CTL_DEL, l->fd, NULL); /* as a flow's socket, above */
  close_fd(r, l->fd);
  l->fd = -1;
  ref_down(r);
  return NULL;
}

/*
 * udpConnect's sockets: a pending flow (pid ≥ 0) gets the slot and a socket connected to the
 * backend; the slot's failed flow (pid -1) is connected to another. NULL, or the errno to answer.
 */
static napi_value connect_flow(napi_env env, Relay *r, Udp *u, uint32_t slot, int32_t pid, const struct sockaddr_storage *ss, socklen_t len) {
  UFlow *f;
  if (pid >= 0) {
    f = (uint32_t)pid < u->npending ? u->pending[pid] : NULL;
    if (f == NULL) return int_value(env, -ENOENT);
    if (slot >= u->nby_slot) {
      uint32_t n = u->nby_slot == 0 ? 1024 : u->nby_slot;
      while (n <= slot) n *= 2;
      UFlow **grown = realloc(u->by_slot, n * sizeof(UFlow *));
      if (grown == NULL) return int_value(env, -ENOMEM);
      memset(grown + u->nby_slot, 0, (n - u->nby_slot) * sizeof(UFlow *));
      u->by_slot = grown;
      u->nby_slot = n;
    }
    if (u->by_slot[slot] != NULL || (slot < r->nslots && r->slots[slot] != NULL)) return int_value(env, -EBUSY);
    int fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return int_value(env, -errno);
    if (!track_fd(r, fd, FD_OWN)) {
      close(fd);
      return int_value(env, -ENOMEM);
    }
    struct epoll_event e;
    e.events = EPOLLIN;
    e.data.u64 = key_of(slot, UDP_FLOW, fd);
    if (connect(fd, (const struct sockaddr *)ss, len) != 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &e) != 0) return close_failed(env, r, fd);
    u->pending[pid] = NULL;
    u->free_pids[u->nfree_pids++] = (uint32_t)pid;
    f->slot = slot;
    f->fd = fd;
    u->by_slot[slot] = f;
    double *st = r->stats + (size_t)slot * STAT_FIELDS;
    for (int i = 0; i < STAT_FIELDS; i++) st[i] = 0;
  } else {
    f = slot < u->nby_slot ? u->by_slot[slot] : NULL;
    if (f == NULL) return int_value(env, -ENOENT);
    /* Another backend for the same socket: connect() again re-targets it (and drops a pending error). */
    if (connect(f->fd, (const struct sockaddr *)ss, len) != 0) return int_value(env, -errno);
  }
  return NULL;
}

/*
 * udpConnect(slot, pendingId, ip, port, family, header, backendState, backendCounters) → 0 or a
 * negative errno. A pending flow (pendingId ≥ 0) becomes the slot's, with a socket connected to
 * the backend; or (pendingId -1) the slot's flow, failed, is connected to another backend. The
 * datagrams it holds go out (and are kept until the first reply, for another backend if this one
 * is unreachable). `header` (Uint8Array or null): the PROXY v2 header for each datagram.
 */
napi_value js_udp_connect(napi_env env, napi_callback_info info) {
  static const char usage[] = "udpConnect(slot, pendingId, ip, port, family, header, backendState, backendCounters)";
  Relay *r;
  uint32_t slot;
  int32_t pid, state_idx, bc;
  struct sockaddr_storage ss;
  socklen_t len;
  int valid;
  void *hdr;
  size_t hdr_len;
  Udp *u = args(env, info, &r, usage, "siAUii", &slot, &pid, &ss, &len, &valid, &hdr, &hdr_len, &state_idx, &bc) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  if (state_idx < 0 || (size_t)state_idx >= u->mem_len * 2 || bc < 0 || (size_t)bc + BACKEND_COUNTERS > u->mem_len || hdr_len > 232) {
    return throw_msg(env, "relay: udpConnect: backendState, backendCounters or header out of range");
  }
  if (((size_t)slot + 1) * STAT_FIELDS > r->stats_len) return int_value(env, -ERANGE);
  if (!valid) return int_value(env, -EINVAL);
  /* The header's copy first: a failure past this point leaves nothing half done. */
  uint8_t *hcopy = NULL;
  if (hdr_len > 0) {
    hcopy = malloc(hdr_len);
    if (hcopy == NULL) return int_value(env, -ENOMEM);
    memcpy(hcopy, hdr, hdr_len);
  }
  napi_value failed = connect_flow(env, r, u, slot, pid, &ss, len);
  if (failed != NULL) {
    free(hcopy);
    return failed;
  }
  UFlow *f = u->by_slot[slot];
  free(f->hdr);
  f->hdr = hcopy;
  f->hdr_len = (uint16_t)hdr_len;
  f->state_idx = state_idx;
  f->bc = bc;
  f->connected = 1;
  f->failed = 0;
  f->moved = 0;
  UListener *l = &u->ls[f->lid];
  for (Held *h = f->held; h != NULL; h = h->next) {
    int err = send_to_backend(f, h->data, h->len);
    if (err != 0 && err != EAGAIN && err != EWOULDBLOCK && err != ENOBUFS) break; /* its error comes back on the socket */
    double *st = flow_stats(r, f);
    st[STAT_BYTES_IN] += h->len;
    st[STAT_DGRAMS_IN] += 1;
    st[STAT_ACTIVITY] += 1;
    if (l->sc >= 0) u->f64[l->sc + SC_DGRAMS_IN] += 1;
    u->f64[f->bc + BC_DGRAMS_IN] += 1;
  }
  if (f->answered) drop_held(f);
  else keep_last(f);
  return int_value(env, 0);
}

/* udpMove(slot): the flow's backend was removed (a reload): its next datagram ends it and starts a new flow. */
napi_value js_udp_move(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t slot;
  Udp *u = args(env, info, &r, "udpMove(slot)", "s", &slot) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  UFlow *f = slot < u->nby_slot ? u->by_slot[slot] : NULL;
  if (f != NULL) f->moved = 1;
  return NULL;
}

/* udpClose(slot, pendingId) → whether there was such a flow: a flow ended by JS (or a pending one refused), freed with its socket and held datagrams. */
napi_value js_udp_close(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t slot;
  int32_t pid;
  Udp *u = args(env, info, &r, "udpClose(slot, pendingId)", "si", &slot, &pid) ? udp_of(env, r) : NULL;
  if (u == NULL) return NULL;
  UFlow *f = pid >= 0 ? ((uint32_t)pid < u->npending ? u->pending[pid] : NULL) : (slot < u->nby_slot ? u->by_slot[slot] : NULL);
  if (f != NULL) free_flow(r, f);
  napi_value result;
  napi_get_boolean(env, f != NULL, &result);
  return result;
}
