/*
 * The relay: moves the bytes of established sessions between their two sockets without entering
 * JavaScript. Built by build/relay.ts into build/out/relay.node; driven by relay.ts.
 *
 * Why it exists: on the JavaScript path every chunk is a call from libuv into JS and a write back
 * (≈ 1.5 µs of Node's own code per chunk), and every connection six such calls; HAProxy pays none
 * of that, and it decided rr and churn (BENCHMARKS.md). JavaScript keeps the whole life cycle —
 * accept, admission and pick (WASM), connect, retries, queue, PROXY headers, timeouts, close,
 * counters — and hands a session here once both sockets are up and nothing is left to send:
 *
 *   splice(slot, clientFd, serverFd)  ─▶  read/write both ways here, half-close, backpressure
 *   one call to onEnded(n) per event-loop wake in which sessions ended: `ended` holds n pairs
 *   (slot, cause); JS then closes the two handles (which closes the fds) and finalizes
 *   stop(slot)                         ─▶  JS takes a session back to close it (kill, timeout)
 *
 * One epoll instance per worker holds the sockets of its relayed sessions; libuv polls that one
 * fd (uv_poll on the worker's own loop), and one wake handles every ready socket (≤ MAX_EVENTS).
 * The sockets stay owned by Node's TCP handles, which JS closes: closing an fd removes it from
 * this epoll, so nothing is removed here on the common path.
 *
 * Per direction at most one buffer is held (HAProxy's model): a chunk is read into the worker's
 * scratch buffer and written at once; only what the kernel did not take is copied into a buffer
 * of the session, and the reading side stops being polled until it is out. An idle relayed
 * session therefore holds no buffer at all.
 *
 * Counters JS reads (shared Float64Array `stats`, STAT_FIELDS doubles per slot): bytes client →
 * server, bytes server → client, and an activity count JS's timeout sweep compares between sweeps.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* Keep in step with relay.ts (checked there against relayConstants()). */
#define RELAY_VERSION 1
#define STAT_BYTES_IN 0
#define STAT_BYTES_OUT 1
#define STAT_ACTIVITY 2
#define STAT_FIELDS 3
#define END_CLIENT 1 /* the client ended the session: its EOF came first, or it reset */
#define END_SERVER 2
#define CLIENT 0
#define SERVER 1

/* Per read: the JS path's largest read buffer (splice.ts READ_BUFFER_SIZE). */
#define SCRATCH_SIZE (64 * 1024)
#define MAX_EVENTS 256

typedef struct {
  uint8_t *buf; /* what the writing side's kernel did not take yet (NULL: nothing) */
  uint32_t off, len;
  uint8_t eof;  /* the reading side sent EOF */
} Dir;

typedef struct {
  int fd[2];        /* CLIENT, SERVER */
  uint32_t ev[2];   /* epoll interest registered for each fd */
  uint8_t reg[2];   /* whether each fd is in the epoll set */
  Dir dir[2];       /* dir[CLIENT]: client → server; dir[SERVER]: server → client */
  uint32_t slot;
  int cause;        /* END_* of the first EOF, 0 before */
} Session;

typedef struct {
  napi_env env;
  uv_poll_t poll;
  int epfd;
  int closing;
  napi_async_cleanup_hook_handle cleanup;
  Session **slots;
  uint32_t nslots;
  uint32_t active;
  double *stats;
  size_t stats_len;
  napi_ref stats_ref;
  int32_t *ended;
  size_t ended_len;
  napi_ref ended_ref;
  uint32_t nended;
  napi_ref on_ended;
  napi_ref resource;
  napi_async_context actx;
  uint8_t scratch[SCRATCH_SIZE];
} Relay;

/* The epoll key of one socket: slot, side and fd (a key whose fd no longer matches is stale). */
static inline uint64_t key_of(uint32_t slot, int side, int fd) {
  return ((uint64_t)slot << 33) | ((uint64_t)side << 32) | (uint32_t)fd;
}

static void end_session(Relay *r, Session *s, int cause);

/* The interest a side needs now: reading unless its direction ended or is blocked, writing while the other direction has bytes waiting. */
static void update_interest(Relay *r, Session *s, int side) {
  uint32_t want = 0;
  if (!s->dir[side].eof && s->dir[side].buf == NULL) want |= EPOLLIN;
  if (s->dir[1 - side].buf != NULL) want |= EPOLLOUT;
  if (s->reg[side] && want == s->ev[side]) return;
  if (!s->reg[side] && want == 0) return;
  struct epoll_event e;
  e.events = want;
  e.data.u64 = key_of(s->slot, side, s->fd[side]);
  if (epoll_ctl(r->epfd, s->reg[side] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd[side], &e) == 0) {
    s->reg[side] = 1;
    s->ev[side] = want;
  } else {
    end_session(r, s, side == CLIENT ? END_CLIENT : END_SERVER);
  }
}

static void free_session(Relay *r, Session *s) {
  free(s->dir[0].buf);
  free(s->dir[1].buf);
  r->slots[s->slot] = NULL;
  free(s);
  if (--r->active == 0) uv_unref((uv_handle_t *)&r->poll);
}

/* Ends a relayed session: JS hears of it after this wake's events (one onEnded call) and closes the sockets. */
static void end_session(Relay *r, Session *s, int cause) {
  if (r->nended * 2 + 2 <= r->ended_len) {
    r->ended[r->nended * 2] = (int32_t)s->slot;
    r->ended[r->nended * 2 + 1] = s->cause != 0 ? s->cause : cause;
    r->nended++;
  }
  free_session(r, s);
}

static inline int done_both_ways(Session *s) {
  return s->dir[0].eof && s->dir[1].eof && s->dir[0].buf == NULL && s->dir[1].buf == NULL;
}

/* The direction read from `side` has sent EOF and everything it sent is out: pass the EOF on. */
static void pass_eof(Relay *r, Session *s, int side) {
  if (done_both_ways(s)) {
    /* Both ways done: JS closes both sockets, and each close sends the FIN still owed. */
    end_session(r, s, 0);
    return;
  }
  if (shutdown(s->fd[1 - side], SHUT_WR) != 0) end_session(r, s, side == CLIENT ? END_SERVER : END_CLIENT);
}

/* Sends what direction `from` holds to the other side. 0: all out, 1: some left, -1: the session ended. */
static int flush(Relay *r, Session *s, int from) {
  Dir *d = &s->dir[from];
  ssize_t w = send(s->fd[1 - from], d->buf + d->off, d->len - d->off, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 1;
    end_session(r, s, from == CLIENT ? END_SERVER : END_CLIENT);
    return -1;
  }
  d->off += (uint32_t)w;
  if (d->off < d->len) return 1;
  free(d->buf);
  d->buf = NULL;
  d->off = d->len = 0;
  return 0;
}

/* HOT: once per ready socket with bytes (or EOF) to read; one read of up to SCRATCH_SIZE, written on at once. */
static void on_readable(Relay *r, Session *s, int side) {
  uint32_t slot = s->slot;
  ssize_t n = recv(s->fd[side], r->scratch, SCRATCH_SIZE, MSG_DONTWAIT);
  if (n > 0) {
    double *st = r->stats + (size_t)s->slot * STAT_FIELDS;
    st[side == CLIENT ? STAT_BYTES_IN : STAT_BYTES_OUT] += (double)n;
    st[STAT_ACTIVITY] += 1;
    ssize_t w = send(s->fd[1 - side], r->scratch, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        end_session(r, s, side == CLIENT ? END_SERVER : END_CLIENT);
        return;
      }
      w = 0;
    }
    if (w == n) return;
    /* Backpressure: keep the rest, stop reading this side until the other has taken it. */
    Dir *d = &s->dir[side];
    d->len = (uint32_t)(n - w);
    d->off = 0;
    d->buf = malloc(d->len);
    if (d->buf == NULL) {
      end_session(r, s, side == CLIENT ? END_CLIENT : END_SERVER);
      return;
    }
    memcpy(d->buf, r->scratch + w, d->len);
    update_interest(r, s, side);
    if (r->slots[slot] == s) update_interest(r, s, 1 - side);
    return;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    end_session(r, s, side == CLIENT ? END_CLIENT : END_SERVER); /* reset */
    return;
  }
  /* EOF: the first one names the end (splice.ts onClientEnd / onServerEnd). */
  s->dir[side].eof = 1;
  if (s->cause == 0) s->cause = side == CLIENT ? END_CLIENT : END_SERVER;
  pass_eof(r, s, side);
  if (r->slots[slot] == s) update_interest(r, s, side);
}

/* Once per wake on a socket that had bytes waiting for it (backpressure released). */
static void on_writable(Relay *r, Session *s, int side) {
  uint32_t slot = s->slot;
  int from = 1 - side;
  if (s->dir[from].buf == NULL) return;
  int left = flush(r, s, from);
  if (left != 0) return;
  r->stats[(size_t)slot * STAT_FIELDS + STAT_ACTIVITY] += 1;
  if (s->dir[from].eof) {
    pass_eof(r, s, from);
    if (r->slots[slot] != s) return; /* ended (both ways done), s is freed */
  }
  update_interest(r, s, side);
  if (r->slots[slot] == s) update_interest(r, s, from);
}

static void call_on_ended(Relay *r) {
  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[1], result;
  napi_get_reference_value(env, r->on_ended, &cb);
  napi_get_reference_value(env, r->resource, &recv); /* make_callback wants an object as `this` */
  napi_create_uint32(env, r->nended, &argv[0]);
  r->nended = 0;
  if (napi_make_callback(env, r->actx, recv, cb, 1, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err); /* the worker's uncaughtException, as any callback's throw */
  }
  napi_close_handle_scope(env, scope);
}

/* libuv: the epoll set has ready sockets. Once per event-loop wake with relayed traffic. */
static void on_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  Relay *r = h->data;
  struct epoll_event evs[MAX_EVENTS];
  int n = epoll_wait(r->epfd, evs, MAX_EVENTS, 0);
  for (int i = 0; i < n; i++) {
    uint64_t k = evs[i].data.u64;
    int fd = (int)(uint32_t)k;
    int side = (int)((k >> 32) & 1);
    uint32_t slot = (uint32_t)(k >> 33);
    Session *s = slot < r->nslots ? r->slots[slot] : NULL;
    if (s == NULL || s->fd[side] != fd) {
      /* A session that ended without its sockets closed yet: no more events from it. */
      epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
      continue;
    }
    uint32_t e = evs[i].events;
    if (e & EPOLLERR) {
      end_session(r, s, side == CLIENT ? END_CLIENT : END_SERVER);
      continue;
    }
    if (e & EPOLLOUT) {
      on_writable(r, s, side);
      if (r->slots[slot] != s) continue;
    }
    if (e & (EPOLLIN | EPOLLHUP)) {
      if (s->ev[side] & EPOLLIN) {
        on_readable(r, s, side);
      } else if (e & EPOLLHUP) {
        /* HUP cannot be masked: a side that is not read from now leaves the set until it is. */
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
        s->reg[side] = 0;
        s->ev[side] = 0;
      }
    }
  }
  if (r->nended > 0) call_on_ended(r);
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

static int get_f64_array(napi_env env, napi_value v, double **data, size_t *len) {
  napi_typedarray_type type;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok || type != napi_float64_array) return 0;
  *data = p;
  return 1;
}

static void on_poll_closed(uv_handle_t *h) {
  Relay *r = h->data;
  napi_async_cleanup_hook_handle hook = r->cleanup;
  free(r);
  napi_remove_async_cleanup_hook(hook);
}

/* The worker (its env) is going away: sessions were ended by JS or die with it; close the poll handle. */
static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  Relay *r = arg;
  r->cleanup = handle;
  r->closing = 1;
  for (uint32_t i = 0; i < r->nslots; i++) {
    if (r->slots[i] != NULL) {
      free(r->slots[i]->dir[0].buf);
      free(r->slots[i]->dir[1].buf);
      free(r->slots[i]);
    }
  }
  free(r->slots);
  close(r->epfd);
  napi_async_destroy(r->env, r->actx);
  uv_poll_stop(&r->poll);
  uv_close((uv_handle_t *)&r->poll, on_poll_closed);
}

/* init(stats: Float64Array, ended: Int32Array, onEnded(n)): once per worker. */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (get_relay(env) != NULL) return throw_msg(env, "relay: init() was called twice in this thread");
  Relay *r = calloc(1, sizeof(Relay));
  if (r == NULL) return throw_msg(env, "relay: out of memory");
  r->env = env;
  napi_typedarray_type type;
  void *p;
  if (argc < 3 || !get_f64_array(env, argv[0], &r->stats, &r->stats_len) ||
      napi_get_typedarray_info(env, argv[1], &type, &r->ended_len, &p, NULL, NULL) != napi_ok || type != napi_int32_array) {
    free(r);
    return throw_msg(env, "relay: init(stats: Float64Array, ended: Int32Array, onEnded: function) expected");
  }
  r->ended = p;
  if (r->ended_len < 2 * MAX_EVENTS) {
    free(r);
    return throw_msg(env, "relay: ended must hold 2 × maxEvents entries (one end per event at most)");
  }
  napi_valuetype vt;
  napi_typeof(env, argv[2], &vt);
  if (vt != napi_function) {
    free(r);
    return throw_msg(env, "relay: onEnded must be a function");
  }
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
  uv_poll_start(&r->poll, UV_READABLE, on_poll);
  uv_unref((uv_handle_t *)&r->poll); /* referenced only while sessions are relayed */
  napi_create_reference(env, argv[0], 1, &r->stats_ref);
  napi_create_reference(env, argv[1], 1, &r->ended_ref);
  napi_create_reference(env, argv[2], 1, &r->on_ended);
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
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  Relay *r = get_relay(env);
  if (r == NULL) return throw_msg(env, "relay: init() first");
  double *data;
  size_t len;
  if (argc < 1 || !get_f64_array(env, argv[0], &data, &len)) return throw_msg(env, "relay: setStats(Float64Array) expected");
  napi_delete_reference(env, r->stats_ref);
  napi_create_reference(env, argv[0], 1, &r->stats_ref);
  r->stats = data;
  r->stats_len = len;
  return NULL;
}

/* splice(slot, clientFd, serverFd) → 0, or a negative errno (the session stays with JS). Once per connection. */
static napi_value js_splice(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  Relay *r = get_relay(env);
  if (r == NULL) return throw_msg(env, "relay: init() first");
  uint32_t slot;
  int32_t cfd, sfd;
  if (argc < 3 || napi_get_value_uint32(env, argv[0], &slot) != napi_ok || napi_get_value_int32(env, argv[1], &cfd) != napi_ok ||
      napi_get_value_int32(env, argv[2], &sfd) != napi_ok || cfd < 0 || sfd < 0) {
    return throw_msg(env, "relay: splice(slot, clientFd, serverFd) expected");
  }
  if ((size_t)(slot + 1) * STAT_FIELDS > r->stats_len) return throw_msg(env, "relay: slot beyond the stats array");
  int32_t err = 0;
  if (slot >= r->nslots) {
    uint32_t n = r->nslots == 0 ? 1024 : r->nslots;
    while (n <= slot) n *= 2;
    Session **grown = realloc(r->slots, n * sizeof(Session *));
    if (grown == NULL) err = -ENOMEM;
    else {
      memset(grown + r->nslots, 0, (n - r->nslots) * sizeof(Session *));
      r->slots = grown;
      r->nslots = n;
    }
  }
  if (err == 0 && r->slots[slot] != NULL) return throw_msg(env, "relay: slot already in use");
  Session *s = err == 0 ? calloc(1, sizeof(Session)) : NULL;
  if (err == 0 && s == NULL) err = -ENOMEM;
  if (err == 0) {
    s->fd[CLIENT] = cfd;
    s->fd[SERVER] = sfd;
    s->slot = slot;
    double *st = r->stats + (size_t)slot * STAT_FIELDS;
    st[STAT_BYTES_IN] = st[STAT_BYTES_OUT] = st[STAT_ACTIVITY] = 0;
    struct epoll_event e;
    e.events = EPOLLIN;
    e.data.u64 = key_of(slot, CLIENT, cfd);
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, cfd, &e) != 0) err = -errno;
    else {
      e.data.u64 = key_of(slot, SERVER, sfd);
      if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, sfd, &e) != 0) {
        err = -errno;
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, cfd, NULL);
      }
    }
    if (err == 0) {
      s->reg[CLIENT] = s->reg[SERVER] = 1;
      s->ev[CLIENT] = s->ev[SERVER] = EPOLLIN;
      r->slots[slot] = s;
      if (r->active++ == 0) uv_ref((uv_handle_t *)&r->poll);
    } else {
      free(s);
    }
  }
  napi_create_int32(env, err, &result);
  return result;
}

/*
 * stop(slot) → 1 if the slot was relayed (now it is not), else 0. JS closes the sockets right
 * after (timeout, kill, shutdown), which removes them from the epoll set.
 */
static napi_value js_stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  Relay *r = get_relay(env);
  uint32_t slot;
  if (r == NULL || argc < 1 || napi_get_value_uint32(env, argv[0], &slot) != napi_ok) return throw_msg(env, "relay: stop(slot) expected");
  Session *s = slot < r->nslots ? r->slots[slot] : NULL;
  if (s != NULL) free_session(r, s);
  napi_get_boolean(env, s != NULL, &result);
  return result;
}

/* constants(): what this build was compiled with, checked by relay.ts at load. */
static napi_value js_constants(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value o, v;
  napi_create_object(env, &o);
#define SET(name, value)                      \
  napi_create_int32(env, (value), &v);        \
  napi_set_named_property(env, o, name, v);
  SET("version", RELAY_VERSION);
  SET("statBytesIn", STAT_BYTES_IN);
  SET("statBytesOut", STAT_BYTES_OUT);
  SET("statActivity", STAT_ACTIVITY);
  SET("statFields", STAT_FIELDS);
  SET("endClient", END_CLIENT);
  SET("endServer", END_SERVER);
  SET("maxEvents", MAX_EVENTS);
#undef SET
  return o;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
    {"setStats", NULL, js_set_stats, NULL, NULL, NULL, napi_default, NULL},
    {"splice", NULL, js_splice, NULL, NULL, NULL, napi_default, NULL},
    {"stop", NULL, js_stop, NULL, NULL, NULL, napi_default, NULL},
    {"constants", NULL, js_constants, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
