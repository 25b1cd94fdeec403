/*
 * The event loop and the sessions of one worker's relay: what moves the bytes.
 *
 * One epoll instance per worker holds the listeners and sockets; libuv polls that one fd on the
 * worker's own loop (uv_poll), and one wake handles every ready socket (≤ MAX_EVENTS). Events go
 * into the shared Int32Array `events`, EV_FIELDS per event, then one call to onEvents(n).
 *
 * Per direction at most one buffer is held (HAProxy's model): a chunk is read into the worker's
 * scratch buffer and written at once; only what the kernel did not take is copied into a buffer
 * of the session, and the reading side is not read until it is out. An idle session holds no
 * buffer at all.
 *
 * A relayed socket is registered once, edge-triggered, for both directions (RELAY_EVENTS): no
 * epoll_ctl per change of state (backpressure, EOF), only the ADD when relaying starts and the
 * DEL at the end. Edge-triggered means an event says "something changed", and the relay must
 * not leave readiness behind that no further edge will report:
 *   - a read that filled the scratch buffer may have left bytes: read again (READS_PER_EVENT
 *     times, then re-arm, so one stream cannot hold the loop);
 *   - a short read empties the queue, except that a FIN right behind the bytes is consumed with
 *     them and no edge follows: the event's EPOLLRDHUP (the peer's FIN had arrived) is kept per
 *     side (Session.rdhup), and a side with it is at EOF after its next short read (TCP queues
 *     the FIN behind every byte before it) or when recv returns 0;
 *   - a side not read while its bytes were held (backpressure) is read once they are out
 *     (on_writable), whatever arrived in between.
 */
#include "relay.h"

void ref_up(Relay *r) {
  if (r->refs++ == 0) uv_ref((uv_handle_t *)&r->poll);
}

void ref_down(Relay *r) {
  if (--r->refs == 0) uv_unref((uv_handle_t *)&r->poll);
}

/*
 * Appends an event for JS. One epoll event makes at most two (EV_CONNECTED then EV_ENDED);
 * accepts stop short of the room that the wake's other epoll events may still need
 * (room_to_accept), so the array, sized by JS for that, never overflows.
 */
int32_t *push_event(Relay *r, int type, uint32_t id, int32_t a) {
  int32_t *e = r->events + (size_t)r->nev * EV_FIELDS;
  r->nev++;
  e[EV_TYPE] = type;
  e[EV_ID] = (int32_t)id;
  e[EV_A] = a;
  return e;
}

/* Whether `fd` is `state` to this relay (FD_*). Once per N-API call that names an fd. */
int fd_is(Relay *r, int fd, int state) {
  if (fd < 0) return 0;
  uint8_t is = (uint32_t)fd < r->nfds ? r->fds[fd] : FD_NONE;
  return is == state;
}

/* Records what `fd` is (growing the table); 0 if there is no memory to. Once per socket. */
int track_fd(Relay *r, int fd, int state) {
  if ((uint32_t)fd >= r->nfds) {
    uint32_t n = r->nfds == 0 ? 1024 : r->nfds;
    while (n <= (uint32_t)fd) n *= 2;
    uint8_t *grown = realloc(r->fds, n);
    if (grown == NULL) return 0;
    memset(grown + r->nfds, 0, n - r->nfds);
    r->fds = grown;
    r->nfds = n;
  }
  r->fds[fd] = (uint8_t)state;
  return 1;
}

/* Forgets `fd` (about to be closed, or given back to Node); one accepted here leaves this relay's load. */
void untrack_fd(Relay *r, int fd) {
  if ((uint32_t)fd >= r->nfds) return;
  uint8_t was = r->fds[fd];
  r->fds[fd] = FD_NONE;
  if ((was == FD_HELD || was == FD_CLIENT) && r->rid >= 0) atomic_fetch_sub_explicit(&g_load[r->rid], 1, memory_order_relaxed);
}

/* Closes a socket of this relay's (a client accepted here, a backend socket, a listener). */
void close_fd(Relay *r, int fd) {
  untrack_fd(r, fd);
  close(fd);
}

/* Records an accepted socket, held by JS (`count`: it adds to this relay's load; a handed-over one
   was counted when it was handed); 0 if there is no memory to (the socket is then refused). */
int remember(Relay *r, int fd, int count) {
  if (!track_fd(r, fd, FD_HELD)) return 0;
  if (count && r->rid >= 0) atomic_fetch_add_explicit(&g_load[r->rid], 1, memory_order_relaxed);
  return 1;
}

/* Frees a session; closes the sockets it owns, unless the client is kept (JS holds it again). */
void free_session(Relay *r, Session *s, int keep_client) {
  for (int side = CLIENT; side <= SERVER; side++) {
    int fd = s->fd[side];
    if (fd < 0) continue;
    /* Out of the epoll set before the close, always: close() removes a registration only when
       no other descriptor refers to the socket, and a process fulcrum forks (`fulcrum upgrade`, a
       VIP or BGP command) holds a copy of every fd until its exec. A registration left behind
       would report the dead socket's events under a number the next socket reuses (ending that
       session as "server closed") and make its EPOLL_CTL_MOD fail with ENOENT. One syscall per
       socket close. */
    if (s->reg[side]) epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    if (s->own[side] && !(side == CLIENT && keep_client)) {
      close_fd(r, fd);
      continue;
    }
    /* A kept client is JS's again; a lent one was never this relay's. */
    if (s->own[side]) r->fds[fd] = FD_HELD;
    else untrack_fd(r, fd);
  }
  free(s->dir[0].buf);
  free(s->dir[1].buf);
  r->slots[s->slot] = NULL;
  free(s);
  ref_down(r);
}

/*
 * `side` reset its connection (ECONNRESET): with propagate_reset, the other side's socket gets
 * SO_LINGER 0, so its close (here, or by the Node handle that owns a lent client) sends a reset
 * instead of a FIN. Once per session that ends on an error.
 */
static void reset_other(Session *s, int side, int err) {
  if (!s->propagate_reset || err != ECONNRESET || s->fd[1 - side] < 0) return;
  struct linger lg = {1, 0};
  setsockopt(s->fd[1 - side], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

/* A session ends here: its sockets are closed (JS closes a Node-owned client), JS hears EV_ENDED. */
static void end_session(Relay *r, Session *s, int cause) {
  push_event(r, EV_ENDED, s->slot, s->cause != 0 ? s->cause : cause);
  free_session(r, s, 0);
}

static inline int closed_by(int side) {
  return side == CLIENT ? END_CLIENT : END_SERVER;
}

/* Puts one of a session's sockets in the epoll set with interest `want` (or changes it): 0, or a negative errno. */
int poll_side(Relay *r, Session *s, int side, uint32_t want) {
  struct epoll_event e;
  e.events = want;
  e.data.u64 = key_of(s->slot, side, s->fd[side]);
  if (epoll_ctl(r->epfd, s->reg[side] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd[side], &e) != 0) return -errno;
  s->reg[side] = 1;
  s->ev[side] = want;
  return 0;
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

/*
 * Side `side` has bytes to write that its kernel did not take: its registration gains EPOLLOUT
 * (once per session and side, on the first backpressure; kept after, as an edge comes only after
 * a send found the buffer full). 0, or -1 if the session ended.
 */
static int want_out(Relay *r, Session *s, int side) {
  if (s->ev[side] & EPOLLOUT) return 0;
  if (poll_side(r, s, side, RELAY_EVENTS | EPOLLOUT) != 0) {
    end_session(r, s, closed_by(side));
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
  return want_out(r, s, 1 - from);
}

/* Sends what direction `from` holds. 0: all out, 1: some left, -1: the session ended. */
static int flush(Relay *r, Session *s, int from) {
  Dir *d = &s->dir[from];
  ssize_t w = send(s->fd[1 - from], d->buf + d->off, d->len - d->off, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 1;
    reset_other(s, 1 - from, errno);
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

/*
 * HOT: once per event on a relayed side (edge-triggered: bytes or EOF arrived, or the socket was
 * re-armed), and once when bytes held for the other side are all out (on_writable). Reads into
 * the scratch buffer and writes on at once, until the queue is empty (a short read; read on to
 * EOF when the peer's FIN has arrived), the other side's kernel takes no more (the rest is held,
 * and reading resumes when it is out), or READS_PER_EVENT full reads (then the socket is re-armed:
 * the next wake comes back to it after the other sockets' events). 0, or -1 if the session ended.
 */
#define READS_PER_EVENT 16
static int on_readable(Relay *r, Session *s, int side) {
  Dir *d = &s->dir[side];
  int i;
  for (i = 0; i < READS_PER_EVENT; i++) {
    if (d->eof || d->buf != NULL) return 0;
    ssize_t n = recv(s->fd[side], r->scratch, SCRATCH_SIZE, MSG_DONTWAIT);
    if (n > 0) {
      double *st = r->stats + (size_t)s->slot * STAT_FIELDS;
      st[side == CLIENT ? STAT_BYTES_IN : STAT_BYTES_OUT] += (double)n;
      st[STAT_ACTIVITY] += 1;
      ssize_t w = send(s->fd[1 - side], r->scratch, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          reset_other(s, 1 - side, errno);
          end_session(r, s, closed_by(1 - side));
          return -1;
        }
        w = 0;
      }
      /* The rest waits for the other side's EPOLLOUT edge (the failed send armed it). */
      if (w < n) return hold(r, s, side, r->scratch + w, (size_t)(n - w));
      if (n == SCRATCH_SIZE) continue;
      if (!s->rdhup[side]) return 0;
      /* A short read after the peer's FIN had arrived: TCP queues a FIN behind every byte sent
         before it, and a short read empties the queue, so what comes next is EOF — taken as
         such without the recv that would say 0 (as HAProxy does), one system call fewer when
         a side's last bytes and FIN come together (a backend that closes after its reply). */
      break;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      if (errno == EINTR) continue;
      reset_other(s, side, errno);
      end_session(r, s, closed_by(side)); /* reset */
      return -1;
    }
    break; /* EOF */
  }
  if (i < READS_PER_EVENT) {
    /* EOF: the first one names the end (as transport-js.ts onClientEnd / onServerEnd). */
    d->eof = 1;
    if (s->cause == 0) s->cause = closed_by(side);
    return pass_eof(r, s, side);
  }
  /* Still full: a MOD re-polls the socket and queues it again while it is readable. */
  if (poll_side(r, s, side, s->ev[side]) != 0) {
    end_session(r, s, closed_by(side));
    return -1;
  }
  return 0;
}

/* Once per EPOLLOUT edge of a relayed side (registered from its first backpressure on: its send
   buffer had been full): sends what the other direction holds; once that is out, passes its EOF
   on or reads that direction again (no edge reports what arrived while it was not read). */
static void on_writable(Relay *r, Session *s, int side) {
  int from = 1 - side;
  if (s->dir[from].buf == NULL) return;
  if (flush(r, s, from) != 0) return;
  r->stats[(size_t)s->slot * STAT_FIELDS + STAT_ACTIVITY] += 1;
  if (s->dir[from].eof) {
    pass_eof(r, s, from);
    return;
  }
  on_readable(r, s, from);
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
  /* Both sides edge-triggered from here (the backend's level-triggered EPOLLOUT becomes
     RELAY_EVENTS); bytes the client sent already are reported by its ADD, and read once the
     prefix is out. */
  if (poll_side(r, s, SERVER, RELAY_EVENTS) != 0 || poll_side(r, s, CLIENT, RELAY_EVENTS) != 0) {
    end_session(r, s, closed_by(SERVER));
    return;
  }
  Dir *c = &s->dir[CLIENT];
  if (c->buf != NULL) {
    int left = flush(r, s, CLIENT);
    if (left < 0) return;
    if (left > 0) {
      want_out(r, s, SERVER); /* the rest at the backend's EPOLLOUT edge (on_writable) */
      return;
    }
  }
  if (c->eof) pass_eof(r, s, CLIENT);
}

/* An address as events and localAddress() carry it: family << 16 | port, then the address bytes. */
void encode_address(const struct sockaddr_storage *ss, int32_t out[5]) {
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

Session *new_session(Relay *r, uint32_t slot, int *err) {
  /* In size_t: slot + 1 must not wrap (the N-API checks bound it by MAX_SLOTS, too). */
  if (slot >= MAX_SLOTS || ((size_t)slot + 1) * STAT_FIELDS > r->stats_len) {
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
void on_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  Relay *r = h->data;
  struct epoll_event evs[MAX_EVENTS];
  atomic_store(&r->awake, 1); /* hand-overs from here on wait in the inbox for the end of this call */
  int n = epoll_wait(r->epfd, evs, MAX_EVENTS, 0);
  for (int i = 0; i < n; i++) {
    uint64_t k = evs[i].data.u64;
    int fd = KEY_FD(k);
    int kind = KEY_KIND(k);
    uint32_t id = KEY_ID(k);
    uint32_t e = evs[i].events;
    if (kind == UDP_FLOW) {
      udp_on_flow(r, id, fd, e);
      continue;
    }
    if (kind == UDP_LISTENER) {
      udp_on_listener(r, id, fd);
      continue;
    }
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
      int err = 0;
      socklen_t len = sizeof(err);
      if (s->propagate_reset && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0) reset_other(s, kind, err);
      end_session(r, s, closed_by(kind));
      continue;
    }
    if (e & (EPOLLRDHUP | EPOLLHUP)) s->rdhup[kind] = 1;
    if (e & EPOLLOUT) {
      on_writable(r, s, kind);
      if (r->slots[id] != s) continue;
    }
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) on_readable(r, s, kind);
  }
  if (r->udp != NULL) udp_flush(r); /* the replies queued this wake: one sendmmsg per service socket */
  if (r->nev > 0) call_on_events(r);
  /* Asleep from here as far as steer() knows; what it handed over meanwhile is taken now (the
     pair of sequentially consistent accesses handoff.c steer() describes). */
  atomic_store(&r->awake, 0);
  if (atomic_load(&r->inbox_pending)) {
    take_inbox(r);
    if (r->nev > 0) call_on_events(r);
  }
  yield_point(r);
}

