/*
 * The relay: the system calls of the data path — accept, connect, and moving bytes both ways —
 * without a call into JavaScript per connection or per chunk. Built by build/relay.ts into
 * build/out/relay.node; driven by relay.ts and splice.ts, one instance per worker thread.
 *
 * Why it exists: Node reaches JavaScript through a callback per accepted socket, per connect,
 * per chunk read and per close, each with a handle object, an async context and a microtask
 * checkpoint (≈ 1.5 µs per chunk, ≈ 50 µs per connection of Node's own code); HAProxy pays none
 * of that, and it decided rr and churn (BENCHMARKS.md). JavaScript keeps every decision —
 * admission and pick (WASM), queue, retries, PROXY headers, timeouts, counters, logs — and this
 * file does what it is told, reporting back in one batch per event-loop wake:
 *
 *   listen(ip, port, family, reusePort, backlog) → listener id     (its sockets: EV_ACCEPT)
 *   connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded)
 *       → EV_CONNECTED, then bytes move both ways here until EV_ENDED; or EV_CONNECT_FAILED
 *   watch(slot, clientFd)      a queued client: EV_CLIENT_GONE if it leaves while waiting
 *   stop(slot, keepClient)     JS ends or takes back a session (timeout, kill, shutdown, dequeue)
 *
 * Events go into the shared Int32Array `events`, EV_FIELDS per event, then one call to
 * onEvents(n). A session's sockets are closed here when it ends (or at stop), except a client
 * socket owned by a Node handle (ownClient = 0: a listener JS accepts on itself), which JS closes.
 *
 * One epoll instance per worker holds the listeners and sockets; libuv polls that one fd on the
 * worker's own loop (uv_poll), and one wake handles every ready socket (≤ MAX_EVENTS).
 *
 * Per direction at most one buffer is held (HAProxy's model): a chunk is read into the worker's
 * scratch buffer and written at once; only what the kernel did not take is copied into a buffer
 * of the session, and the reading side is not polled until it is out. An idle session holds no
 * buffer at all.
 *
 * Counters JS reads (shared Float64Array `stats`, STAT_FIELDS doubles per slot): bytes client →
 * server, bytes server → client, and an activity count JS's timeout sweep compares between sweeps.
 *
 * Spreading connections over the workers: each worker listens on the service's address with
 * SO_REUSEPORT, and the kernel picks the listener by a hash of the client's address and port, not
 * by load (HAProxy gives each connection to its least-loaded thread). With long-lived connections
 * (database pools, the benchmark's rr) a hash spread of 50 can be 30 / 20 for their whole life. So
 * a relay that accepts a connection while it holds two or more client connections more than
 * another relay listening on the same address hands the new one over (steer()): the socket goes
 * into that relay's inbox and its eventfd wakes it; it reports EV_ACCEPT on its own listener for
 * that address, as if the kernel had queued the connection there. JavaScript sees nothing of it.
 * The registry of relays, their inboxes and their listener tables (read by other threads) are
 * guarded by one mutex; the loads are atomics read without it.
 */
#define _GNU_SOURCE /* accept4 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The event layout (EV_*, END_*, STAT_*, MAX_EVENTS, MAX_ACCEPT) and the Node this relay is built
   for (FULCRUM_NODE_ABI, FULCRUM_NODE_VERSION), generated from src/shm/layout.ts by build/relay.ts. */
#include "relay-layout.h"

/* Keep in step with relay.ts (checked there against constants()). */
#ifndef RELAY_VERSION /* tests build a relay of another version to see it refused */
#define RELAY_VERSION 2
#endif

#define CLIENT 0
#define SERVER 1
#define LISTENER 2
#define INBOX 3 /* the relay's eventfd: connections another relay handed over */

/* Per read: the JS path's largest read buffer (splice.ts READ_BUFFER_SIZE). */
#define SCRATCH_SIZE (64 * 1024)

enum { ST_WATCH = 1, ST_CONNECTING, ST_RELAY };

typedef struct {
  uint8_t *buf; /* what the writing side's kernel did not take yet (NULL: nothing) */
  uint32_t off, len;
  uint8_t eof;  /* the reading side sent EOF */
} Dir;

typedef struct {
  int fd[2];      /* CLIENT, SERVER (-1: none) */
  uint8_t own[2]; /* whether this file closes the socket */
  uint8_t reg[2]; /* whether it is in the epoll set */
  uint32_t ev[2]; /* its epoll interest */
  Dir dir[2];     /* dir[CLIENT]: client → server; dir[SERVER]: server → client */
  uint32_t slot;
  int state;
  int cause;      /* END_* of the first EOF, 0 before */
} Session;

/* A connection another relay accepted and handed over: the listener address it came to, and the
   EV_ACCEPT fields (family << 16 | port, address bytes) it already computed. */
typedef struct {
  int fd;
  struct sockaddr_storage to;
  int32_t from[5];
} Handoff;

typedef struct {
  napi_env env;
  uv_poll_t poll;
  int epfd;
  int rid;        /* index in the registry (-1: not registered: no steering) */
  int inbox_fd;   /* eventfd another relay writes after filling `inbox` */
  Handoff *inbox; /* under g_lock */
  uint32_t ninbox, inbox_cap;
  struct sockaddr_storage *lkeys; /* the bound address per listener id (under g_lock) */
  napi_async_cleanup_hook_handle cleanup;
  Session **slots;
  uint32_t nslots;
  int *listeners; /* fd per listener id, -1: free */
  uint32_t nlisteners;
  uint32_t refs;  /* sessions + listeners: the poll handle keeps the loop alive while > 0 */
  /* Client sockets accepted here and not closed yet, by fd (1: open): whatever JS holds them
     for, they are closed when the worker goes away (a crash must not leak connections). */
  uint8_t *accepted;
  uint32_t naccepted;
  double *stats;
  size_t stats_len;
  napi_ref stats_ref;
  int32_t *events;
  size_t events_len;
  uint32_t nev;
  napi_ref events_ref;
  napi_ref on_events;
  napi_ref resource;
  napi_async_context actx;
  int64_t yielded_ns; /* CLOCK_MONOTONIC of the last yield_point() that read the CPU clock */
  uint8_t scratch[SCRATCH_SIZE];
} Relay;

/* ── the registry of relays (one per worker thread of this process) ─────────────────────────── */

#define MAX_RELAYS 64
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static Relay *g_relays[MAX_RELAYS];
/* Client connections each relay holds: accepted here or handed over, not closed yet. INT32_MAX
   for a free registry slot, so a scan for the least loaded skips it without the lock. */
static _Atomic int32_t g_load[MAX_RELAYS];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void init_loads(void) {
  for (int i = 0; i < MAX_RELAYS; i++) atomic_store(&g_load[i], INT32_MAX);
}

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

/* The listener id of `r` bound to `to`, or -1. Called with g_lock held, or on r's own thread. */
static int listener_for(Relay *r, const struct sockaddr_storage *to) {
  for (uint32_t i = 0; i < r->nlisteners; i++) if (r->listeners[i] >= 0 && same_address(&r->lkeys[i], to)) return (int)i;
  return -1;
}

/* The epoll key of one socket: id (slot or listener), kind and fd (a key whose fd no longer matches is stale). */
static inline uint64_t key_of(uint32_t id, int kind, int fd) {
  return ((uint64_t)id << 34) | ((uint64_t)kind << 32) | (uint32_t)fd;
}

static void ref_up(Relay *r) {
  if (r->refs++ == 0) uv_ref((uv_handle_t *)&r->poll);
}

static void ref_down(Relay *r) {
  if (--r->refs == 0) uv_unref((uv_handle_t *)&r->poll);
}

/*
 * Appends an event for JS. One epoll event makes at most two (EV_CONNECTED then EV_ENDED);
 * accepts stop short of the room that the wake's other epoll events may still need
 * (room_to_accept), so the array, sized by JS for that, never overflows.
 */
static int32_t *push_event(Relay *r, int type, uint32_t id, int32_t a) {
  int32_t *e = r->events + (size_t)r->nev * EV_FIELDS;
  r->nev++;
  e[EV_TYPE] = type;
  e[EV_ID] = (int32_t)id;
  e[EV_A] = a;
  return e;
}

/* Closes a socket; one accepted here leaves the accepted set (and this relay's load). */
static void close_fd(Relay *r, int fd) {
  if ((uint32_t)fd < r->naccepted && r->accepted[fd]) {
    r->accepted[fd] = 0;
    if (r->rid >= 0) atomic_fetch_sub_explicit(&g_load[r->rid], 1, memory_order_relaxed);
  }
  close(fd);
}

/* Records an accepted socket (`count`: it adds to this relay's load; a handed-over one was counted
   when it was handed); 0 if there is no memory to (the socket is then refused). */
static int remember(Relay *r, int fd, int count) {
  if ((uint32_t)fd >= r->naccepted) {
    uint32_t n = r->naccepted == 0 ? 1024 : r->naccepted;
    while (n <= (uint32_t)fd) n *= 2;
    uint8_t *grown = realloc(r->accepted, n);
    if (grown == NULL) return 0;
    memset(grown + r->naccepted, 0, n - r->naccepted);
    r->accepted = grown;
    r->naccepted = n;
  }
  r->accepted[fd] = 1;
  if (count && r->rid >= 0) atomic_fetch_add_explicit(&g_load[r->rid], 1, memory_order_relaxed);
  return 1;
}

/* Frees a session; closes the sockets it owns, unless the client is kept (JS still needs it). */
static void free_session(Relay *r, Session *s, int keep_client) {
  for (int side = CLIENT; side <= SERVER; side++) {
    int fd = s->fd[side];
    if (fd < 0) continue;
    if (s->own[side] && !(side == CLIENT && keep_client)) {
      close_fd(r, fd); /* also leaves the epoll set */
    } else if (s->reg[side]) {
      epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    }
  }
  free(s->dir[0].buf);
  free(s->dir[1].buf);
  r->slots[s->slot] = NULL;
  free(s);
  ref_down(r);
}

/* A session ends here: its sockets are closed (JS closes a Node-owned client), JS hears EV_ENDED. */
static void end_session(Relay *r, Session *s, int cause) {
  push_event(r, EV_ENDED, s->slot, s->cause != 0 ? s->cause : cause);
  free_session(r, s, 0);
}

static inline int closed_by(int side) {
  return side == CLIENT ? END_CLIENT : END_SERVER;
}

/* Sets a socket's epoll interest; 0 on success, else the session has ended. */
static int set_interest(Relay *r, Session *s, int side, uint32_t want) {
  if (s->reg[side] && want == s->ev[side]) return 0;
  if (!s->reg[side] && want == 0) return 0;
  struct epoll_event e;
  e.events = want;
  e.data.u64 = key_of(s->slot, side, s->fd[side]);
  if (epoll_ctl(r->epfd, s->reg[side] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd[side], &e) != 0) {
    end_session(r, s, closed_by(side));
    return -1;
  }
  s->reg[side] = 1;
  s->ev[side] = want;
  return 0;
}

/* The interest a relayed side needs now: reading unless its direction ended or is blocked, writing while the other direction has bytes waiting. */
static int update_interest(Relay *r, Session *s, int side) {
  uint32_t want = 0;
  if (!s->dir[side].eof && s->dir[side].buf == NULL) want |= EPOLLIN;
  if (s->dir[1 - side].buf != NULL) want |= EPOLLOUT;
  return set_interest(r, s, side, want);
}

static inline int done_both_ways(Session *s) {
  return s->dir[0].eof && s->dir[1].eof && s->dir[0].buf == NULL && s->dir[1].buf == NULL;
}

/* Direction `from` has sent EOF and everything it sent is out: pass the EOF on. 0, or -1 if the session ended. */
static int pass_eof(Relay *r, Session *s, int from) {
  if (done_both_ways(s)) {
    /* Both ways done: closing both sockets sends the FIN still owed. */
    end_session(r, s, 0);
    return -1;
  }
  if (shutdown(s->fd[1 - from], SHUT_WR) != 0) {
    end_session(r, s, closed_by(1 - from));
    return -1;
  }
  return 0;
}

/* Keeps bytes the other side's kernel did not take (backpressure). 0, or -1 if the session ended. */
static int hold(Relay *r, Session *s, int from, const uint8_t *data, size_t len) {
  Dir *d = &s->dir[from];
  d->buf = malloc(len);
  if (d->buf == NULL) {
    end_session(r, s, closed_by(from));
    return -1;
  }
  memcpy(d->buf, data, len);
  d->off = 0;
  d->len = (uint32_t)len;
  return 0;
}

/* Sends what direction `from` holds. 0: all out, 1: some left, -1: the session ended. */
static int flush(Relay *r, Session *s, int from) {
  Dir *d = &s->dir[from];
  ssize_t w = send(s->fd[1 - from], d->buf + d->off, d->len - d->off, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 1;
    end_session(r, s, closed_by(1 - from));
    return -1;
  }
  d->off += (uint32_t)w;
  if (d->off < d->len) return 1;
  free(d->buf);
  d->buf = NULL;
  d->off = d->len = 0;
  return 0;
}

/* HOT: once per ready socket with bytes (or EOF) to read: one read of up to SCRATCH_SIZE, written on at once. */
static void on_readable(Relay *r, Session *s, int side) {
  ssize_t n = recv(s->fd[side], r->scratch, SCRATCH_SIZE, MSG_DONTWAIT);
  if (n > 0) {
    double *st = r->stats + (size_t)s->slot * STAT_FIELDS;
    st[side == CLIENT ? STAT_BYTES_IN : STAT_BYTES_OUT] += (double)n;
    st[STAT_ACTIVITY] += 1;
    ssize_t w = send(s->fd[1 - side], r->scratch, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        end_session(r, s, closed_by(1 - side));
        return;
      }
      w = 0;
    }
    if (w == n) return;
    /* Stop reading this side until the other has taken the rest. */
    if (hold(r, s, side, r->scratch + w, (size_t)(n - w)) != 0) return;
    if (update_interest(r, s, side) != 0) return;
    update_interest(r, s, 1 - side);
    return;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    end_session(r, s, closed_by(side)); /* reset */
    return;
  }
  /* EOF: the first one names the end (as splice.ts onClientEnd / onServerEnd). */
  s->dir[side].eof = 1;
  if (s->cause == 0) s->cause = closed_by(side);
  if (pass_eof(r, s, side) != 0) return;
  update_interest(r, s, side);
}

/* Once per wake on a socket that had bytes waiting for it (backpressure released). */
static void on_writable(Relay *r, Session *s, int side) {
  int from = 1 - side;
  if (s->dir[from].buf == NULL) return;
  if (flush(r, s, from) != 0) return;
  r->stats[(size_t)s->slot * STAT_FIELDS + STAT_ACTIVITY] += 1;
  if (s->dir[from].eof && pass_eof(r, s, from) != 0) return;
  if (update_interest(r, s, side) != 0) return;
  update_interest(r, s, from);
}

/* The backend's connect completed (or failed): start relaying, prefix first. */
static void on_connect_done(Relay *r, Session *s, uint32_t events) {
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(s->fd[SERVER], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      push_event(r, EV_CONNECT_FAILED, s->slot, -err);
      free_session(r, s, 1);
      return;
    }
  }
  s->state = ST_RELAY;
  push_event(r, EV_CONNECTED, s->slot, 0);
  Dir *c = &s->dir[CLIENT];
  if (c->buf != NULL) {
    int left = flush(r, s, CLIENT);
    if (left < 0) return;
  }
  if (c->eof && c->buf == NULL && pass_eof(r, s, CLIENT) != 0) return;
  if (update_interest(r, s, SERVER) != 0) return;
  update_interest(r, s, CLIENT);
}

static inline int room_to_accept(Relay *r) {
  return (size_t)(r->nev + 2 * MAX_EVENTS + 1) * EV_FIELDS <= r->events_len;
}

/* An address as events and localAddress() carry it: family << 16 | port, then the address bytes. */
static void encode_address(const struct sockaddr_storage *ss, int32_t out[5]) {
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    out[0] = (6 << 16) | ntohs(a->sin6_port);
    memcpy(&out[1], &a->sin6_addr, 16);
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    out[0] = (4 << 16) | ntohs(a->sin_port);
    memcpy(&out[1], &a->sin_addr, 4);
  }
}

/* Highest registry index in use + 1: how far the scans go. */
static _Atomic int g_nrid;

/*
 * HOT: once per accepted connection. Hands `fd` over to the least-loaded relay that listens on
 * the same address, if this one holds two or more client connections more than it; 1 if handed.
 * Balanced (the usual case), it costs one scan of the loads, without the lock.
 */
static int steer(Relay *r, uint32_t lid, int fd, const int32_t from[5]) {
  int n = atomic_load_explicit(&g_nrid, memory_order_relaxed);
  int32_t mine = atomic_load_explicit(&g_load[r->rid], memory_order_relaxed);
  int32_t least = INT32_MAX;
  for (int i = 0; i < n; i++) {
    int32_t l = atomic_load_explicit(&g_load[i], memory_order_relaxed);
    if (i != r->rid && l < least) least = l;
  }
  if (least == INT32_MAX || mine < least + 2) return 0;
  int handed = 0;
  pthread_mutex_lock(&g_lock);
  int best = -1;
  int32_t best_load = mine - 1;
  for (int i = 0; i < n; i++) {
    Relay *t = g_relays[i];
    if (t == NULL || t == r) continue;
    int32_t l = atomic_load_explicit(&g_load[i], memory_order_relaxed);
    if (l < best_load && listener_for(t, &r->lkeys[lid]) >= 0) {
      best = i;
      best_load = l;
    }
  }
  if (best >= 0) {
    Relay *t = g_relays[best];
    if (t->ninbox == t->inbox_cap) {
      uint32_t cap = t->inbox_cap == 0 ? 64 : t->inbox_cap * 2;
      Handoff *grown = realloc(t->inbox, cap * sizeof(Handoff));
      if (grown != NULL) {
        t->inbox = grown;
        t->inbox_cap = cap;
      }
    }
    if (t->ninbox < t->inbox_cap) {
      Handoff *h = &t->inbox[t->ninbox++];
      h->fd = fd;
      h->to = r->lkeys[lid];
      memcpy(h->from, from, sizeof(h->from));
      atomic_fetch_add_explicit(&g_load[best], 1, memory_order_relaxed);
      uint64_t one = 1;
      if (write(t->inbox_fd, &one, sizeof(one)) < 0) { /* the counter is far from overflowing: cannot fail */ }
      handed = 1;
    }
  }
  pthread_mutex_unlock(&g_lock);
  return handed;
}

/* The inbox's eventfd is readable: each connection handed over becomes an EV_ACCEPT here. */
static void adopt(Relay *r) {
  uint64_t count;
  if (read(r->inbox_fd, &count, sizeof(count)) < 0) { /* EAGAIN: woken for entries already taken */ }
  pthread_mutex_lock(&g_lock);
  uint32_t i = 0;
  for (; i < r->ninbox && room_to_accept(r); i++) {
    Handoff *h = &r->inbox[i];
    int lid = listener_for(r, &h->to);
    /* The listener for that address closed meanwhile (pause, move): the connection is closed, as
       the kernel does with the connections queued on a listener that closes. */
    if (lid < 0 || !remember(r, h->fd, 0)) {
      close(h->fd);
      atomic_fetch_sub_explicit(&g_load[r->rid], 1, memory_order_relaxed);
      continue;
    }
    int32_t *e = push_event(r, EV_ACCEPT, (uint32_t)lid, h->fd);
    memcpy(&e[EV_B], h->from, sizeof(h->from));
  }
  if (i > 0) {
    memmove(r->inbox, r->inbox + i, (r->ninbox - i) * sizeof(Handoff));
    r->ninbox -= i;
  }
  if (r->ninbox > 0) {
    /* No room for the rest in this wake's events: wake again for them. */
    uint64_t one = 1;
    if (write(r->inbox_fd, &one, sizeof(one)) < 0) { /* cannot fail, see steer() */ }
  }
  pthread_mutex_unlock(&g_lock);
}

/* A listener is readable: up to MAX_ACCEPT connections, each an EV_ACCEPT (the rest wait for the next wake). */
static void on_acceptable(Relay *r, uint32_t lid, int lfd) {
  for (int i = 0; i < MAX_ACCEPT && room_to_accept(r); i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      /* Out of files or memory: stop polling this listener until JS resumes it (else the
         level-triggered listener would wake the loop at once, for ever). */
      push_event(r, EV_ACCEPT_ERROR, lid, -errno);
      struct epoll_event e = {0};
      e.data.u64 = key_of(lid, LISTENER, lfd);
      epoll_ctl(r->epfd, EPOLL_CTL_MOD, lfd, &e);
      return;
    }
    int32_t from[5] = {0};
    encode_address(&ss, from);
    if (r->rid >= 0 && steer(r, lid, fd, from)) continue;
    if (!remember(r, fd, 1)) {
      close(fd);
      continue;
    }
    int32_t *e = push_event(r, EV_ACCEPT, lid, fd);
    memcpy(&e[EV_B], from, sizeof(from));
  }
}

static void call_on_events(Relay *r) {
  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[1], result;
  napi_get_reference_value(env, r->on_events, &cb);
  napi_get_reference_value(env, r->resource, &recv); /* make_callback wants an object as `this` */
  napi_create_uint32(env, r->nev, &argv[0]);
  r->nev = 0;
  if (napi_make_callback(env, r->actx, recv, cb, 1, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err); /* the worker's uncaughtException, as any callback's throw */
  }
  napi_close_handle_scope(env, scope);
}

/*
 * After each batch (once per wake with traffic): a point where the scheduler may take the core.
 * Reading this thread's CPU clock makes the kernel bring the thread's run time up to date, and if
 * its time slice is used up, switch to another task on the way out of the call. Without it the
 * worker runs past its slice until the next timer tick (up to 4 ms at HZ 250) and is preempted
 * wherever that lands — in the middle of a batch, holding the requests it has read and not yet
 * written, which then wait for the whole time slice of the backends and the clients on a busy
 * machine: the tail of rr's latency. Here it gives way with nothing in hand. HAProxy's poll loop
 * makes the same call around each epoll_wait (for its CPU accounting) and has this for free;
 * measured (BENCHMARKS.md), a minimal C epoll proxy's rr p99 went from 1.21× HAProxy's to 0.88×
 * with this one call, fulcrum's from 1.36× to 0.98×.
 * That call takes the run queue's lock, so it is made at most every YIELD_CHECK_NS (streaming
 * wakes the worker tens of thousands of times a second with a chunk or two each); a slice is
 * ≈ 1.4 ms here (se.slice in /proc/PID/sched), so being told of its end up to 100 µs late still
 * lands between batches. The monotonic clock is read without a system call (vDSO).
 * What it costs: under bulk (1 worker) ≈ 10 % of the Gbit per CPU-second in A/B runs, with one
 * call per wake and with this limit alike — so the scheduling, not the call (not measured
 * further); bulk stays 1.2–1.6× HAProxy's.
 */
#define YIELD_CHECK_NS 100000
static inline void yield_point(Relay *r) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  if (now - r->yielded_ns < YIELD_CHECK_NS) return;
  r->yielded_ns = now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
}

/* libuv: the epoll set has ready sockets. Once per event-loop wake with traffic. */
static void on_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  Relay *r = h->data;
  struct epoll_event evs[MAX_EVENTS];
  int n = epoll_wait(r->epfd, evs, MAX_EVENTS, 0);
  for (int i = 0; i < n; i++) {
    uint64_t k = evs[i].data.u64;
    int fd = (int)(uint32_t)k;
    int kind = (int)((k >> 32) & 3);
    uint32_t id = (uint32_t)(k >> 34);
    uint32_t e = evs[i].events;
    if (kind == INBOX) {
      adopt(r);
      continue;
    }
    if (kind == LISTENER) {
      if (id < r->nlisteners && r->listeners[id] == fd) on_acceptable(r, id, fd);
      continue;
    }
    Session *s = id < r->nslots ? r->slots[id] : NULL;
    if (s == NULL || s->fd[kind] != fd) {
      /* A socket kept open after its session (a Node-owned client): no more events from it. */
      epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
      continue;
    }
    if (s->state == ST_WATCH) {
      push_event(r, EV_CLIENT_GONE, id, 0);
      free_session(r, s, 1);
      continue;
    }
    if (s->state == ST_CONNECTING) {
      on_connect_done(r, s, e);
      continue;
    }
    if (e & EPOLLERR) {
      end_session(r, s, closed_by(kind));
      continue;
    }
    if (e & EPOLLOUT) {
      on_writable(r, s, kind);
      if (r->slots[id] != s) continue;
    }
    if (e & (EPOLLIN | EPOLLHUP)) {
      if (s->ev[kind] & EPOLLIN) {
        on_readable(r, s, kind);
      } else if (e & EPOLLHUP) {
        /* HUP cannot be masked: a side not read from now leaves the set until it is again. */
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
        s->reg[kind] = 0;
        s->ev[kind] = 0;
      }
    }
  }
  if (r->nev > 0) call_on_events(r);
  yield_point(r);
}

/* ── JS API ─────────────────────────────────────────────────────────────── */

static Relay *get_relay(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return data;
}

static napi_value throw_msg(napi_env env, const char *msg) {
  napi_throw_error(env, "FULCRUM_ERR_RELAY", msg);
  return NULL;
}

static napi_value int_value(napi_env env, int32_t v) {
  napi_value result;
  napi_create_int32(env, v, &result);
  return result;
}

static int typed_array(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  napi_typedarray_type type;
  if (napi_get_typedarray_info(env, v, &type, len, data, NULL, NULL) != napi_ok || type != want) return 0;
  return 1;
}

/* Reads `argc` arguments into argv, and the relay; NULL (with an exception) if init() was not called. */
static Relay *args(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_get_cb_info(env, info, argc, argv, NULL, NULL);
  Relay *r = get_relay(env);
  if (r == NULL) throw_msg(env, "relay: init() first");
  return r;
}

/*
 * An IPv4 or IPv6 address and port into a sockaddr: 1, or 0 if `ip` is not a string, -1 if it is
 * not an address of that family (the caller answers -EINVAL: a bad address is a failed connect or
 * listen, not a programming error). IPv6 with a zone (fe80::1%eth0) goes through getaddrinfo.
 */
static int to_sockaddr(napi_env env, napi_value ip, int32_t port, int32_t family, struct sockaddr_storage *ss, socklen_t *len) {
  char text[64];
  size_t n;
  if (napi_get_value_string_utf8(env, ip, text, sizeof(text), &n) != napi_ok) return 0;
  memset(ss, 0, sizeof(*ss));
  if (family == 6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    *len = sizeof(*a);
    if (strchr(text, '%') != NULL) {
      struct addrinfo hints, *res;
      memset(&hints, 0, sizeof(hints));
      hints.ai_family = AF_INET6;
      hints.ai_flags = AI_NUMERICHOST;
      if (getaddrinfo(text, NULL, &hints, &res) != 0) return -1;
      memcpy(a, res->ai_addr, sizeof(*a));
      freeaddrinfo(res);
    } else if (inet_pton(AF_INET6, text, &a->sin6_addr) != 1) {
      return -1;
    }
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    return 1;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)ss;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  *len = sizeof(*a);
  return inet_pton(AF_INET, text, &a->sin_addr) == 1 ? 1 : -1;
}

static void on_poll_closed(uv_handle_t *h) {
  Relay *r = h->data;
  napi_async_cleanup_hook_handle hook = r->cleanup;
  free(r);
  napi_remove_async_cleanup_hook(hook);
}

/* The worker (its env) is going away: close every socket this file owns, then the poll handle. */
static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  Relay *r = arg;
  r->cleanup = handle;
  /* Out of the registry first: no other relay hands connections over or reads the listener table
     once this returns; what is still in the inbox goes with the worker, as its own accepts do. */
  if (r->rid >= 0) {
    pthread_mutex_lock(&g_lock);
    g_relays[r->rid] = NULL;
    atomic_store(&g_load[r->rid], INT32_MAX);
    for (uint32_t i = 0; i < r->ninbox; i++) close(r->inbox[i].fd);
    r->ninbox = 0;
    pthread_mutex_unlock(&g_lock);
  }
  free(r->inbox);
  if (r->inbox_fd >= 0) close(r->inbox_fd);
  for (uint32_t i = 0; i < r->nslots; i++) {
    Session *s = r->slots[i];
    if (s == NULL) continue;
    if (s->fd[SERVER] >= 0) close(s->fd[SERVER]);
    free(s->dir[0].buf);
    free(s->dir[1].buf);
    free(s);
  }
  for (uint32_t fd = 0; fd < r->naccepted; fd++) if (r->accepted[fd]) close((int)fd);
  for (uint32_t i = 0; i < r->nlisteners; i++) if (r->listeners[i] >= 0) close(r->listeners[i]);
  free(r->slots);
  free(r->listeners);
  free(r->lkeys);
  free(r->accepted);
  close(r->epfd);
  napi_async_destroy(r->env, r->actx);
  uv_poll_stop(&r->poll);
  uv_close((uv_handle_t *)&r->poll, on_poll_closed);
}

/* Joins the registry with an inbox (an eventfd in the epoll set); without one (64 workers, no
   eventfd) the relay works alone: it neither hands over nor takes connections. */
static void register_relay(Relay *r) {
  pthread_once(&g_once, init_loads);
  r->rid = -1;
  r->inbox_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->inbox_fd < 0) return;
  struct epoll_event e;
  e.events = EPOLLIN;
  e.data.u64 = key_of(0, INBOX, r->inbox_fd);
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->inbox_fd, &e) != 0) return;
  pthread_mutex_lock(&g_lock);
  for (int i = 0; i < MAX_RELAYS; i++) {
    if (g_relays[i] != NULL) continue;
    g_relays[i] = r;
    atomic_store(&g_load[i], 0);
    r->rid = i;
    if (i >= atomic_load(&g_nrid)) atomic_store(&g_nrid, i + 1);
    break;
  }
  pthread_mutex_unlock(&g_lock);
}

/* init(stats: Float64Array, events: Int32Array, onEvents(n)): once per worker. */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (get_relay(env) != NULL) return throw_msg(env, "relay: init() was called twice in this thread");
  Relay *r = calloc(1, sizeof(Relay));
  if (r == NULL) return throw_msg(env, "relay: out of memory");
  r->env = env;
  void *stats, *events;
  napi_valuetype vt = napi_undefined;
  if (argc == 3) napi_typeof(env, argv[2], &vt);
  if (argc < 3 || !typed_array(env, argv[0], napi_float64_array, &stats, &r->stats_len) ||
      !typed_array(env, argv[1], napi_int32_array, &events, &r->events_len) || vt != napi_function) {
    free(r);
    return throw_msg(env, "relay: init(stats: Float64Array, events: Int32Array, onEvents: function) expected");
  }
  if (r->events_len < (size_t)(2 * MAX_EVENTS + 1 + MAX_ACCEPT) * EV_FIELDS) {
    free(r);
    return throw_msg(env, "relay: events must hold 2 × maxEvents + 1 + maxAccept events");
  }
  r->stats = stats;
  r->events = events;
  r->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (r->epfd < 0) {
    free(r);
    return throw_msg(env, "relay: epoll_create1 failed");
  }
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  if (uv_poll_init(loop, &r->poll, r->epfd) != 0) {
    close(r->epfd);
    free(r);
    return throw_msg(env, "relay: uv_poll_init failed");
  }
  r->poll.data = r;
  register_relay(r);
  uv_poll_start(&r->poll, UV_READABLE, on_poll);
  uv_unref((uv_handle_t *)&r->poll); /* referenced only while it has sessions or listeners */
  napi_create_reference(env, argv[0], 1, &r->stats_ref);
  napi_create_reference(env, argv[1], 1, &r->events_ref);
  napi_create_reference(env, argv[2], 1, &r->on_events);
  napi_value resource, name;
  napi_create_object(env, &resource);
  napi_create_reference(env, resource, 1, &r->resource);
  napi_create_string_utf8(env, "fulcrum.relay", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, resource, name, &r->actx);
  napi_set_instance_data(env, r, NULL, NULL);
  napi_add_async_cleanup_hook(env, on_env_cleanup, r, NULL);
  return NULL;
}

/* setStats(stats: Float64Array): the array grew (JS copied the old figures into it). */
static napi_value js_set_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  void *data;
  size_t len;
  if (argc < 1 || !typed_array(env, argv[0], napi_float64_array, &data, &len)) return throw_msg(env, "relay: setStats(Float64Array) expected");
  napi_delete_reference(env, r->stats_ref);
  napi_create_reference(env, argv[0], 1, &r->stats_ref);
  r->stats = data;
  r->stats_len = len;
  return NULL;
}

/* listen(ip, port, family, reusePort, backlog) → listener id, or a negative errno. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  int32_t port, family, backlog;
  bool reuse;
  struct sockaddr_storage ss;
  socklen_t len;
  int addr = 0;
  if (argc < 5 || napi_get_value_int32(env, argv[1], &port) != napi_ok || napi_get_value_int32(env, argv[2], &family) != napi_ok ||
      napi_get_value_bool(env, argv[3], &reuse) != napi_ok || napi_get_value_int32(env, argv[4], &backlog) != napi_ok ||
      (addr = to_sockaddr(env, argv[0], port, family, &ss, &len)) == 0) {
    return throw_msg(env, "relay: listen(ip, port, family, reusePort, backlog) expected");
  }
  if (addr < 0) return int_value(env, -EINVAL);
  uint32_t lid = 0;
  while (lid < r->nlisteners && r->listeners[lid] >= 0) lid++;
  if (lid == r->nlisteners) {
    /* Other relays read these tables while steering: grown under the lock. */
    uint32_t n = r->nlisteners == 0 ? 8 : r->nlisteners * 2;
    pthread_mutex_lock(&g_lock);
    int *grown = realloc(r->listeners, n * sizeof(int));
    struct sockaddr_storage *keys = grown == NULL ? NULL : realloc(r->lkeys, n * sizeof(struct sockaddr_storage));
    if (grown != NULL) r->listeners = grown;
    if (keys != NULL) {
      r->lkeys = keys;
      for (uint32_t i = r->nlisteners; i < n; i++) r->listeners[i] = -1;
      r->nlisteners = n;
    }
    pthread_mutex_unlock(&g_lock);
    if (keys == NULL) return int_value(env, -ENOMEM);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_value(env, -errno);
  int on = 1;
  /* As libuv: SO_REUSEADDR (restart while old connections are in TIME_WAIT); SO_REUSEPORT so the
     workers' listeners share the address and the kernel spreads connections among them;
     TCP_NODELAY, which accepted sockets inherit. */
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (reuse && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) goto fail;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0) goto fail;
  struct epoll_event e;
  e.events = EPOLLIN;
  e.data.u64 = key_of(lid, LISTENER, fd);
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &e) != 0) goto fail;
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  if (getsockname(fd, (struct sockaddr *)&bound, &blen) != 0) goto fail;
  pthread_mutex_lock(&g_lock);
  r->listeners[lid] = fd;
  r->lkeys[lid] = bound;
  pthread_mutex_unlock(&g_lock);
  ref_up(r);
  return int_value(env, (int32_t)lid);
fail: {
    int err = errno;
    close(fd);
    return int_value(env, -err);
  }
}

static int listener_arg(napi_env env, napi_callback_info info, Relay **r, uint32_t *lid) {
  size_t argc = 1;
  napi_value argv[1];
  *r = args(env, info, &argc, argv);
  if (*r == NULL) return 0;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], lid) != napi_ok) {
    throw_msg(env, "relay: a listener id expected");
    return 0;
  }
  return *lid < (*r)->nlisteners && (*r)->listeners[*lid] >= 0;
}

/* closeListener(id): stops accepting and closes the socket (connections accepted stay). */
static napi_value js_close_listener(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  if (!listener_arg(env, info, &r, &lid)) return NULL;
  pthread_mutex_lock(&g_lock);
  close(r->listeners[lid]);
  r->listeners[lid] = -1;
  pthread_mutex_unlock(&g_lock);
  ref_down(r);
  return NULL;
}

/* resume(id): polls a listener again after EV_ACCEPT_ERROR paused it. */
static napi_value js_resume(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  if (!listener_arg(env, info, &r, &lid)) return NULL;
  struct epoll_event e;
  e.events = EPOLLIN;
  e.data.u64 = key_of(lid, LISTENER, r->listeners[lid]);
  epoll_ctl(r->epfd, EPOLL_CTL_MOD, r->listeners[lid], &e);
  return NULL;
}

/* A new session struct in `slot` (growing the table); NULL with *err set. */
static Session *new_session(Relay *r, uint32_t slot, int *err) {
  if ((size_t)(slot + 1) * STAT_FIELDS > r->stats_len) {
    *err = -ERANGE;
    return NULL;
  }
  if (slot >= r->nslots) {
    uint32_t n = r->nslots == 0 ? 1024 : r->nslots;
    while (n <= slot) n *= 2;
    Session **grown = realloc(r->slots, n * sizeof(Session *));
    if (grown == NULL) {
      *err = -ENOMEM;
      return NULL;
    }
    memset(grown + r->nslots, 0, (n - r->nslots) * sizeof(Session *));
    r->slots = grown;
    r->nslots = n;
  }
  if (r->slots[slot] != NULL) {
    *err = -EBUSY;
    return NULL;
  }
  Session *s = calloc(1, sizeof(Session));
  if (s == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  s->fd[CLIENT] = s->fd[SERVER] = -1;
  s->slot = slot;
  r->slots[slot] = s;
  ref_up(r);
  return s;
}

/*
 * connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded) → 0, or a negative
 * errno (nothing was kept: the client socket is still JS's). Once per connect attempt. `prefix`
 * (a Uint8Array or null) goes to the backend first: a PROXY header, bytes read before.
 */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  uint32_t slot;
  int32_t cfd, port, family;
  bool own, ended;
  struct sockaddr_storage ss;
  socklen_t len;
  int addr = 0;
  if (argc < 8 || napi_get_value_uint32(env, argv[0], &slot) != napi_ok || napi_get_value_int32(env, argv[1], &cfd) != napi_ok ||
      napi_get_value_bool(env, argv[2], &own) != napi_ok || napi_get_value_int32(env, argv[4], &port) != napi_ok ||
      napi_get_value_int32(env, argv[5], &family) != napi_ok || napi_get_value_bool(env, argv[7], &ended) != napi_ok ||
      (addr = to_sockaddr(env, argv[3], port, family, &ss, &len)) == 0 || cfd < 0) {
    return throw_msg(env, "relay: connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded) expected");
  }
  if (addr < 0) return int_value(env, -EINVAL);
  void *prefix = NULL;
  size_t prefix_len = 0;
  napi_valuetype vt;
  napi_typeof(env, argv[6], &vt);
  if (vt != napi_null && vt != napi_undefined && !typed_array(env, argv[6], napi_uint8_array, &prefix, &prefix_len)) {
    return throw_msg(env, "relay: connect: prefix must be a Uint8Array or null");
  }
  int err = 0;
  Session *s = new_session(r, slot, &err);
  if (s == NULL) return int_value(env, err);
  s->fd[CLIENT] = cfd;
  s->own[CLIENT] = own;
  s->state = ST_CONNECTING;
  s->dir[CLIENT].eof = ended;
  if (ended) s->cause = END_CLIENT;
  double *st = r->stats + (size_t)slot * STAT_FIELDS;
  st[STAT_BYTES_IN] = st[STAT_BYTES_OUT] = st[STAT_ACTIVITY] = 0;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = -errno;
    goto fail;
  }
  s->fd[SERVER] = fd;
  s->own[SERVER] = 1;
  int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
    err = -errno;
    goto fail;
  }
  if (prefix_len > 0) {
    s->dir[CLIENT].buf = malloc(prefix_len);
    if (s->dir[CLIENT].buf == NULL) {
      err = -ENOMEM;
      goto fail;
    }
    memcpy(s->dir[CLIENT].buf, prefix, prefix_len);
    s->dir[CLIENT].len = (uint32_t)prefix_len;
  }
  /* Writable once connected; an error or HUP if it failed (on_connect_done). */
  struct epoll_event e;
  e.events = EPOLLOUT;
  e.data.u64 = key_of(slot, SERVER, fd);
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &e) != 0) {
    err = -errno;
    goto fail;
  }
  s->reg[SERVER] = 1;
  s->ev[SERVER] = EPOLLOUT;
  return int_value(env, 0);
fail:
  free_session(r, s, 1);
  return int_value(env, err);
}

/* watch(slot, clientFd) → 0 or a negative errno: EV_CLIENT_GONE when a waiting client leaves. */
static napi_value js_watch(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  uint32_t slot;
  int32_t cfd;
  if (argc < 2 || napi_get_value_uint32(env, argv[0], &slot) != napi_ok || napi_get_value_int32(env, argv[1], &cfd) != napi_ok || cfd < 0) {
    return throw_msg(env, "relay: watch(slot, clientFd) expected");
  }
  int err = 0;
  Session *s = new_session(r, slot, &err);
  if (s == NULL) return int_value(env, err);
  s->fd[CLIENT] = cfd;
  s->state = ST_WATCH;
  struct epoll_event e;
  e.events = EPOLLRDHUP;
  e.data.u64 = key_of(slot, CLIENT, cfd);
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, cfd, &e) != 0) {
    err = -errno;
    free_session(r, s, 1);
    return int_value(env, err);
  }
  s->reg[CLIENT] = 1;
  s->ev[CLIENT] = EPOLLRDHUP;
  return int_value(env, 0);
}

/*
 * stop(slot, keepClient) → whether the slot had a session. Its sockets are closed, except the
 * client when kept (a dequeued or retried session) or owned by a Node handle; no event follows.
 */
static napi_value js_stop(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  uint32_t slot;
  bool keep;
  if (argc < 2 || napi_get_value_uint32(env, argv[0], &slot) != napi_ok || napi_get_value_bool(env, argv[1], &keep) != napi_ok) {
    return throw_msg(env, "relay: stop(slot, keepClient) expected");
  }
  Session *s = slot < r->nslots ? r->slots[slot] : NULL;
  if (s != NULL) free_session(r, s, keep);
  napi_get_boolean(env, s != NULL, &result);
  return result;
}

/* closeFd(fd): a client socket JS held without a session here (refused, queued, failed connects). */
static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  int32_t fd;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return throw_msg(env, "relay: closeFd(fd) expected");
  close_fd(r, fd);
  return NULL;
}

/* localAddress(fd, out: Int32Array) → 0 or a negative errno; out: family << 16 | port, address bytes. */
static napi_value js_local_address(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  Relay *r = args(env, info, &argc, argv);
  if (r == NULL) return NULL;
  int32_t fd;
  void *out;
  size_t n;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || !typed_array(env, argv[1], napi_int32_array, &out, &n) || n < 5) {
    return throw_msg(env, "relay: localAddress(fd, Int32Array(5)) expected");
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return int_value(env, -errno);
  encode_address(&ss, out);
  return int_value(env, 0);
}

/* constants(): what this build was compiled with, checked by relay.ts at load. */
static napi_value js_constants(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value o;
  napi_create_object(env, &o);
#define SET(name, value) napi_set_named_property(env, o, name, int_value(env, (value)));
  SET("version", RELAY_VERSION);
  SET("statBytesIn", STAT_BYTES_IN);
  SET("statBytesOut", STAT_BYTES_OUT);
  SET("statActivity", STAT_ACTIVITY);
  SET("statFields", STAT_FIELDS);
  SET("evFields", EV_FIELDS);
  SET("evAccept", EV_ACCEPT);
  SET("evAcceptError", EV_ACCEPT_ERROR);
  SET("evConnected", EV_CONNECTED);
  SET("evConnectFailed", EV_CONNECT_FAILED);
  SET("evEnded", EV_ENDED);
  SET("evClientGone", EV_CLIENT_GONE);
  SET("endClient", END_CLIENT);
  SET("endServer", END_SERVER);
  SET("maxEvents", MAX_EVENTS);
  SET("maxAccept", MAX_ACCEPT);
  SET("nodeAbi", FULCRUM_NODE_ABI);
#undef SET
  napi_value built_for;
  napi_create_string_utf8(env, FULCRUM_NODE_VERSION, NAPI_AUTO_LENGTH, &built_for);
  napi_set_named_property(env, o, "nodeVersion", built_for);
  return o;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
    {"setStats", NULL, js_set_stats, NULL, NULL, NULL, napi_default, NULL},
    {"listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL},
    {"closeListener", NULL, js_close_listener, NULL, NULL, NULL, napi_default, NULL},
    {"resume", NULL, js_resume, NULL, NULL, NULL, napi_default, NULL},
    {"connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL},
    {"watch", NULL, js_watch, NULL, NULL, NULL, napi_default, NULL},
    {"stop", NULL, js_stop, NULL, NULL, NULL, napi_default, NULL},
    {"closeFd", NULL, js_close_fd, NULL, NULL, NULL, napi_default, NULL},
    {"localAddress", NULL, js_local_address, NULL, NULL, NULL, napi_default, NULL},
    {"constants", NULL, js_constants, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
