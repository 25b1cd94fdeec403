/*
 * The registry of relays (one per worker thread of this process) and the hand-over of
 * connections between them.
 *
 * Each worker listens on a service's address with SO_REUSEPORT, and the kernel picks the listener
 * by a hash of the client's address and port, not by load (HAProxy gives each connection to its
 * least-loaded thread). With long-lived connections (database pools, the benchmark's rr) a hash
 * spread of 50 can be 30 / 20 for their whole life. So a relay that accepts a connection while it
 * holds two or more client connections more than another relay listening on the same address
 * hands the new one over (steer()): the socket goes into that relay's inbox and its eventfd wakes
 * it; it reports EV_ACCEPT on its own listener for that address (adopt()), as if the kernel had
 * queued the connection there. Only a relay that may be asleep is woken: one in its on_poll
 * (Relay.awake) takes its inbox before it returns, and an inbox that held connections already
 * has its wake coming — under churn with two workers half the connections are handed over, and
 * an eventfd write each was a system call and often a thread's wake-up per connection. JavaScript sees nothing of it. The registry, the inboxes and the
 * listener tables (read by other threads) are guarded by g_lock; the loads are atomics read
 * without it.
 */
#include "relay.h"

#define MAX_RELAYS 64
pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static Relay *g_relays[MAX_RELAYS];
/* Client connections each relay holds: accepted here or handed over, not closed yet. INT32_MAX
   for a free registry slot, so a scan for the least loaded skips it without the lock. */
_Atomic int32_t g_load[MAX_RELAYS];
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


/* A closed listener of `r` that was bound to `to` (its address is kept until the id is reused), or -1. With g_lock held. */
static int closed_listener_for(Relay *r, const struct sockaddr_storage *to) {
  for (uint32_t i = 0; i < r->nlisteners; i++) if (r->listeners[i] < 0 && same_address(&r->lkeys[i], to)) return (int)i;
  return -1;
}

/* Highest registry index in use + 1: how far the scans go. */
static _Atomic int g_nrid;

/*
 * HOT: once per accepted connection. Hands `fd` over to the least-loaded relay that listens on
 * the same address, if this one holds two or more client connections more than it; 1 if handed.
 * Balanced (the usual case), it costs one scan of the loads, without the lock.
 */
int steer(Relay *r, uint32_t lid, int fd, const int32_t from[5]) {
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
      int was_empty = t->ninbox == 0;
      Handoff *h = &t->inbox[t->ninbox++];
      h->fd = fd;
      h->to = r->lkeys[lid];
      memcpy(h->from, from, sizeof(h->from));
      atomic_fetch_add_explicit(&g_load[best], 1, memory_order_relaxed);
      /* Pairs with on_poll's clearing of `awake` (both sequentially consistent): either t sees
         this flag before it sleeps, or this sees t asleep and wakes it. */
      atomic_store(&t->inbox_pending, 1);
      uint64_t one = 1;
      if (was_empty && !atomic_load(&t->awake) && write(t->inbox_fd, &one, sizeof(one)) < 0) { /* the counter is far from overflowing: cannot fail */ }
      handed = 1;
    }
  }
  pthread_mutex_unlock(&g_lock);
  return handed;
}

/*
 * A listener is about to close (a reload, a retiring worker, a stop, an upgrade's old process):
 * the connections the kernel has queued on it are accepted now, into this relay's own inbox, so
 * they arrive at the next wake (adopt()) as EV_ACCEPT on the closed listener's id and are served
 * instead of being reset by the close — drain before close, for kernels or settings without
 * net.ipv4.tcp_migrate_req. Bounded: connections still arriving meanwhile are the kernel's.
 * Called with g_lock held. How many it took.
 */
int drain_listener(Relay *r, uint32_t lid, int lfd) {
  if (r->rid < 0 || r->inbox_fd < 0) return 0; /* not registered: this relay works alone */
  int n = 0;
  while (n < 4096) {
    if (r->ninbox == r->inbox_cap) {
      uint32_t cap = r->inbox_cap == 0 ? 64 : r->inbox_cap * 2;
      Handoff *grown = realloc(r->inbox, cap * sizeof(Handoff));
      if (grown == NULL) break;
      r->inbox = grown;
      r->inbox_cap = cap;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      break; /* EAGAIN: the queue is empty; anything else: left to the kernel */
    }
    Handoff *h = &r->inbox[r->ninbox++];
    h->fd = fd;
    h->to = r->lkeys[lid];
    encode_address(&ss, h->from);
    atomic_fetch_add_explicit(&g_load[r->rid], 1, memory_order_relaxed);
    n++;
  }
  if (n > 0) atomic_store(&r->inbox_pending, 1);
  uint64_t one = 1;
  if (n > 0 && write(r->inbox_fd, &one, sizeof(one)) < 0) { /* cannot fail, see steer() */ }
  return n;
}

/* The inbox's eventfd is readable: each connection handed over becomes an EV_ACCEPT here. */
void adopt(Relay *r) {
  uint64_t count;
  if (read(r->inbox_fd, &count, sizeof(count)) < 0) { /* EAGAIN: woken for entries already taken */ }
  take_inbox(r);
}

/* Each connection in the inbox becomes an EV_ACCEPT here: at an eventfd wake (adopt), and at the
   end of each on_poll that saw inbox_pending (steer() wrote no eventfd while this was awake). */
void take_inbox(Relay *r) {
  pthread_mutex_lock(&g_lock);
  uint32_t i = 0;
  for (; i < r->ninbox && room_to_accept(r); i++) {
    Handoff *h = &r->inbox[i];
    int lid = listener_for(r, &h->to);
    /* The listener for that address closed meanwhile (a stop, an upgrade, a retiring worker, a
       pause or move): the connection was accepted already, by the relay that handed it over, so it
       is reported on the closed listener's id and JS serves it (a drain serves what it accepted);
       only a relay that never listened there closes it. */
    if (lid < 0) lid = closed_listener_for(r, &h->to);
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
  if (r->ninbox == 0) atomic_store(&r->inbox_pending, 0);
  if (r->ninbox > 0) {
    /* No room for the rest in this wake's events: wake again for them. */
    uint64_t one = 1;
    if (write(r->inbox_fd, &one, sizeof(one)) < 0) { /* cannot fail, see steer() */ }
  }
  pthread_mutex_unlock(&g_lock);
}


/* Joins the registry with an inbox (an eventfd in the epoll set); without one (64 workers, no
   eventfd) the relay works alone: it neither hands over nor takes connections. Once per worker. */
void register_relay(Relay *r) {
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


/* Leaves the registry (the worker is going away): no other relay hands connections over or reads
   the listener table once this returns; what is still in the inbox goes with the worker, as its
   own accepts do. */
void unregister_relay(Relay *r) {
  if (r->rid < 0) return;
  pthread_mutex_lock(&g_lock);
  g_relays[r->rid] = NULL;
  atomic_store(&g_load[r->rid], INT32_MAX);
  for (uint32_t i = 0; i < r->ninbox; i++) close(r->inbox[i].fd);
  r->ninbox = 0;
  atomic_store(&r->inbox_pending, 0);
  pthread_mutex_unlock(&g_lock);
}
