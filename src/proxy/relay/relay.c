/*
 * The relay: the system calls of the data path — accept, connect, and moving bytes both ways —
 * without a call into JavaScript per connection or per chunk. Built by build/relay.ts into
 * build/out/relay.node (with loop.c and handoff.c); driven by relay.ts and the relay transport
 * (transport-relay.ts), one instance per worker thread. This file is its Node-API surface.
 *
 * Why it exists: Node reaches JavaScript through a callback per accepted socket, per connect,
 * per chunk read and per close, each with a handle object, an async context and a microtask
 * checkpoint (≈ 1.5 µs per chunk, ≈ 50 µs per connection of Node's own code); HAProxy pays none
 * of that, and it decided rr and churn (BENCHMARKS.md). JavaScript keeps every decision —
 * admission and pick (WASM), queue, retries, PROXY headers, timeouts, counters, logs — and this
 * file does what it is told, reporting back in one batch per event-loop wake:
 *
 *   listen(ip, port, family, reusePort, backlog) → listener id     (its sockets: EV_ACCEPT)
 *   adopt(fd) → listener id    a listening socket handed over by the previous process (upgrade)
 *   listenerFd(id) → fd        what an upgrade hands to the next process
 *   keepAlive(id, opts)        a listener's TCP keepalive (its accepted sockets inherit it)
 *   connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded, opts)
 *       → EV_CONNECTED, then bytes move both ways here until EV_ENDED; or EV_CONNECT_FAILED;
 *         or CONNECT_DONE as the result (connected within the call: no EV_CONNECTED follows)
 *   watch(slot, clientFd)      a queued client: EV_CLIENT_GONE if it leaves while waiting
 *   pause(id) / resume(id)     a listener stops / starts accepting (the descriptor reserve)
 *   quiesce(fd, on)            a listener drops new SYNs (unanswered, not refused) or not (a BGP drain)
 *   stop(slot, keepClient)     JS ends or takes back a session (timeout, kill, shutdown, dequeue)
 *   udpInit, udpListen, udpConfigure, udpCloseListener, udpConnect, udpMove, udpClose
 *                              UDP services (udp.c): EV_UDP_NEW for a new flow's first datagram,
 *                              held until udpConnect names its backend; datagrams move here
 *
 * Events go into the shared Int32Array `events`, EV_FIELDS per event, then one call to
 * onEvents(n). A session's sockets are closed by the relay when it ends (or at stop), except a
 * client socket owned by a Node handle (ownClient false: accept_proxy services, whose listener JS
 * accepts on), which JS closes.
 *
 * The event loop and the sessions are in loop.c; the hand-over of connections between workers'
 * relays (so that long-lived connections end up evenly spread) in handoff.c; relay.h has the
 * layout they share.
 *
 * JavaScript names sockets by fd. It may name only what this relay gave it: connect, watch and
 * closeFd take a client the relay accepted and JS holds (FD_HELD), or, for a Node handle's
 * socket lent to a session (ownClient false), a stream socket that is none of the relay's; any
 * other fd is refused with EBADF (ENOTSOCK: not a stream socket) and left alone; socketOptions,
 * which only reads (getsockopt, for tests and diagnosis), takes any, and quiesce any listening
 * TCP socket (a Node server's too). Slots are
 * integers below MAX_SLOTS and within the stats array; anything else is refused where it is read
 * (args(), 's').
 */
#include "relay.h"

#include <stdarg.h>
#include <stdio.h>

static Relay *get_relay(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return data;
}

napi_value throw_msg(napi_env env, const char *msg) {
  napi_throw_error(env, "FULCRUM_ERR_RELAY", msg);
  return NULL;
}

napi_value int_value(napi_env env, int32_t v) {
  napi_value result;
  napi_create_int32(env, v, &result);
  return result;
}

static int typed_array(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  napi_typedarray_type type;
  if (napi_get_typedarray_info(env, v, &type, len, data, NULL, NULL) != napi_ok || type != want) return 0;
  return 1;
}

/* An integer in [0, limit) from a JS number (no wrap-around: -1 or 2^32 - 1 are refused). */
static int index_value(napi_env env, napi_value v, uint32_t limit, uint32_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d >= (double)limit || d != (double)(uint32_t)d) return 0;
  *out = (uint32_t)d;
  return 1;
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

#define MAX_ARGS 10

/*
 * The prologue of every JS call: reads the arguments by `fmt`, one letter each, into the pointers
 * that follow (in order); on a missing or wrong one throws "relay: <usage> expected" and returns
 * 0. With `r` non-NULL, the relay of this thread too (init() first, else it throws).
 *   i  int32_t*      a number
 *   b  bool*         a boolean
 *   s  uint32_t*     a slot: an integer in [0, MAX_SLOTS)
 *   l  uint32_t*     a listener id (an integer; closeListener and resume ignore unknown ones)
 *   d  int32_t*      an fd: an integer ≥ 0 (whose fd it is, the call checks: fd_is)
 *   v  napi_value*   taken as is
 *   A  struct sockaddr_storage*, socklen_t*, int*   three arguments: ip (a string), port, family
 *                    (numbers), as a sockaddr; the int says whether ip is an address of that family
 *                    (0: the call answers -EINVAL, a failed listen or connect, not an exception)
 *   F  void**, size_t*   a Float64Array's data and length
 *   I  void**, size_t*   an Int32Array's
 *   U  void**, size_t*   a Uint8Array's, or null / undefined (NULL, 0)
 *   f  napi_value*   a function
 * Once per call from JS (per connect attempt, per session's end: not per chunk).
 */
int args(napi_env env, napi_callback_info info, Relay **r, const char *usage, const char *fmt, ...) {
  size_t argc = MAX_ARGS;
  napi_value argv[MAX_ARGS];
  char msg[160];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (r != NULL && (*r = get_relay(env)) == NULL) {
    throw_msg(env, "relay: init() first");
    return 0;
  }
  size_t want = strlen(fmt) + 2 * (strchr(fmt, 'A') != NULL);
  int ok = argc >= want;
  va_list ap;
  va_start(ap, fmt);
  for (size_t f = 0, i = 0; ok && fmt[f] != 0; f++, i++) {
    napi_value v = argv[i];
    napi_valuetype vt = napi_undefined;
    napi_typeof(env, v, &vt);
    switch (fmt[f]) {
      case 'i': ok = napi_get_value_int32(env, v, va_arg(ap, int32_t *)) == napi_ok; break;
      case 'b': ok = napi_get_value_bool(env, v, va_arg(ap, bool *)) == napi_ok; break;
      case 's': ok = index_value(env, v, MAX_SLOTS, va_arg(ap, uint32_t *)); break;
      case 'l': ok = index_value(env, v, UINT32_MAX, va_arg(ap, uint32_t *)); break;
      case 'd': {
        uint32_t fd = 0;
        ok = index_value(env, v, INT32_MAX, &fd);
        *va_arg(ap, int32_t *) = (int32_t)fd;
        break;
      }
      case 'v': *va_arg(ap, napi_value *) = v; break;
      case 'A': {
        struct sockaddr_storage *ss = va_arg(ap, struct sockaddr_storage *);
        socklen_t *len = va_arg(ap, socklen_t *);
        int *valid = va_arg(ap, int *);
        int32_t port, family;
        ok = napi_get_value_int32(env, argv[i + 1], &port) == napi_ok && napi_get_value_int32(env, argv[i + 2], &family) == napi_ok;
        int addr = ok ? to_sockaddr(env, v, port, family, ss, len) : 0;
        ok = addr != 0;
        *valid = addr > 0;
        i += 2;
        break;
      }
      case 'F': case 'I': case 'U': {
        void **data = va_arg(ap, void **);
        size_t *len = va_arg(ap, size_t *);
        if (fmt[f] == 'U' && (vt == napi_null || vt == napi_undefined)) {
          *data = NULL;
          *len = 0;
          break;
        }
        napi_typedarray_type type = fmt[f] == 'F' ? napi_float64_array : fmt[f] == 'I' ? napi_int32_array : napi_uint8_array;
        ok = typed_array(env, v, type, data, len);
        break;
      }
      case 'f': *va_arg(ap, napi_value *) = v; ok = vt == napi_function; break;
      default: ok = 0;
    }
  }
  va_end(ap);
  if (!ok) {
    snprintf(msg, sizeof(msg), "relay: %s expected", usage);
    throw_msg(env, msg);
  }
  return ok;
}

static void on_poll_closed(uv_handle_t *h) {
  Relay *r = h->data;
  napi_async_cleanup_hook_handle hook = r->cleanup;
  free(r);
  napi_remove_async_cleanup_hook(hook);
}

/* The worker (its env) is going away: close every socket this relay owns, then the poll handle. */
static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  Relay *r = arg;
  r->cleanup = handle;
  unregister_relay(r);
  udp_cleanup(r);
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
  for (uint32_t fd = 0; fd < r->nfds; fd++) if (r->fds[fd] == FD_HELD || r->fds[fd] == FD_CLIENT) close((int)fd);
  for (uint32_t i = 0; i < r->nlisteners; i++) if (r->listeners[i] >= 0) close(r->listeners[i]);
  free(r->slots);
  free(r->listeners);
  free(r->lkeys);
  free(r->fds);
  close(r->epfd);
  napi_async_destroy(r->env, r->actx);
  uv_poll_stop(&r->poll);
  uv_close((uv_handle_t *)&r->poll, on_poll_closed);
}

/* init(stats: Float64Array, events: Int32Array, onEvents(n)): once per worker. */
static napi_value js_init(napi_env env, napi_callback_info info) {
  void *stats, *events;
  size_t stats_len, events_len;
  napi_value on_events, stats_v, events_v;
  if (!args(env, info, NULL, "init(stats: Float64Array, events: Int32Array, onEvents: function)", "vvf", &stats_v, &events_v, &on_events)) return NULL;
  if (!typed_array(env, stats_v, napi_float64_array, &stats, &stats_len) || !typed_array(env, events_v, napi_int32_array, &events, &events_len)) {
    return throw_msg(env, "relay: init(stats: Float64Array, events: Int32Array, onEvents: function) expected");
  }
  if (get_relay(env) != NULL) return throw_msg(env, "relay: init() was called twice in this thread");
  if (events_len < (size_t)(2 * MAX_EVENTS + 1 + MAX_ACCEPT) * EV_FIELDS) {
    return throw_msg(env, "relay: events must hold 2 × maxEvents + 1 + maxAccept events");
  }
  Relay *r = calloc(1, sizeof(Relay));
  if (r == NULL) return throw_msg(env, "relay: out of memory");
  r->env = env;
  r->stats = stats;
  r->stats_len = stats_len;
  r->events = events;
  r->events_len = events_len;
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
  /* Its own fds are never a client JS may name (a failed track only loses that refusal). */
  track_fd(r, r->epfd, FD_OWN);
  if (r->inbox_fd >= 0) track_fd(r, r->inbox_fd, FD_OWN);
  uv_poll_start(&r->poll, UV_READABLE, on_poll);
  uv_unref((uv_handle_t *)&r->poll); /* referenced only while it has sessions or listeners */
  napi_create_reference(env, stats_v, 1, &r->stats_ref);
  napi_create_reference(env, events_v, 1, &r->events_ref);
  napi_create_reference(env, on_events, 1, &r->on_events);
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
  Relay *r;
  napi_value v;
  void *data;
  size_t len;
  if (!args(env, info, &r, "setStats(Float64Array)", "v", &v)) return NULL;
  if (!typed_array(env, v, napi_float64_array, &data, &len)) return throw_msg(env, "relay: setStats(Float64Array) expected");
  napi_delete_reference(env, r->stats_ref);
  napi_create_reference(env, v, 1, &r->stats_ref);
  r->stats = data;
  r->stats_len = len;
  return NULL;
}

/* A listen that failed at a system call: its socket closed, the call's errno returned (negative). */
napi_value close_failed(napi_env env, Relay *r, int fd) {
  int err = errno;
  close_fd(r, fd);
  return int_value(env, -err);
}

/*
 * TCP keepalive on `fd` from opts (OPT_KEEP_*, seconds; idle 0: off). Per listener when its table
 * comes, and per backend socket (and lent client) of a service that sets tcp_keepalive.
 */
static void set_keepalive(int fd, const int32_t *opts) {
  int on = opts[OPT_KEEP_IDLE] > 0;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  if (!on) return;
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &opts[OPT_KEEP_IDLE], sizeof(int32_t));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &opts[OPT_KEEP_INTERVAL], sizeof(int32_t));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &opts[OPT_KEEP_COUNT], sizeof(int32_t));
}

/* keepAlive(id, opts: Int32Array): the listener's TCP keepalive, which the sockets it accepts inherit. */
static napi_value js_keep_alive(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  void *opts;
  size_t n;
  if (!args(env, info, &r, "keepAlive(id, opts: Int32Array(4))", "lI", &lid, &opts, &n)) return NULL;
  if (n < OPT_FIELDS) return throw_msg(env, "relay: keepAlive(id, opts: Int32Array(4)) expected");
  if (lid < r->nlisteners && r->listeners[lid] >= 0) set_keepalive(r->listeners[lid], opts);
  return NULL;
}


/*
 * Whether JS may make `fd` the client of a session: a client accepted here and held by JS (own),
 * or a Node handle's stream socket that is none of this relay's (lent). 0, or a negative errno.
 */
static int client_fd_check(Relay *r, int fd, int own) {
  if (own) return fd_is(r, fd, FD_HELD) ? 0 : -EBADF;
  if (!fd_is(r, fd, FD_NONE)) return -EBADF;
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return errno == ENOTSOCK ? -ENOTSOCK : -EBADF;
  return type == SOCK_STREAM ? 0 : -ENOTSOCK;
}

/*
 * A new session in `slot` with client `fd` (tracked as the session's, accepted here, or as lent),
 * once JS may name that fd (client_fd_check); NULL with *err set, and nothing kept.
 */
static Session *open_session(Relay *r, uint32_t slot, int fd, int own, int *err) {
  if ((*err = client_fd_check(r, fd, own)) != 0) return NULL;
  Session *s = new_session(r, slot, err);
  if (s == NULL) return NULL;
  if (!track_fd(r, fd, own ? FD_CLIENT : FD_LENT)) {
    *err = -ENOMEM;
    free_session(r, s, 1);
    return NULL;
  }
  s->fd[CLIENT] = fd;
  s->own[CLIENT] = (uint8_t)own;
  return s;
}

/*
 * connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded, opts) → 0, or a
 * negative errno (nothing was kept: the client socket is still JS's). Once per connect attempt.
 * `prefix` (a Uint8Array or null) goes to the backend first: a PROXY header, bytes read before.
 * `opts` (Int32Array, OPT_*): propagate_reset, and the keepalive of the backend socket and of a
 * lent client (a relay-accepted client has its listener's).
 */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  static const char usage[] = "connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded, opts: Int32Array(4))";
  Relay *r;
  uint32_t slot;
  int32_t cfd;
  bool own, ended;
  struct sockaddr_storage ss;
  socklen_t len;
  int valid;
  void *prefix, *optv;
  size_t prefix_len, nopts;
  if (!args(env, info, &r, usage, "sdbAUbI", &slot, &cfd, &own, &ss, &len, &valid, &prefix, &prefix_len, &ended, &optv, &nopts)) return NULL;
  if (nopts < OPT_FIELDS) return throw_msg(env, "relay: connect(…, opts: Int32Array(4)) expected");
  const int32_t *opts = optv;
  if (!valid) return int_value(env, -EINVAL);
  int err;
  Session *s = open_session(r, slot, cfd, own, &err);
  if (s == NULL) return int_value(env, err);
  s->state = ST_CONNECTING;
  s->propagate_reset = (opts[OPT_FLAGS] & OPT_PROPAGATE_RESET) != 0;
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
  if (!track_fd(r, fd, FD_OWN)) {
    err = -ENOMEM;
    goto fail;
  }
  int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  if (opts[OPT_KEEP_IDLE] > 0) {
    set_keepalive(fd, opts);
    if (!own) set_keepalive(cfd, opts); /* a Node listener's client: its listener set the idle time only */
  }
  /* Bytes the client has sent already, copied into the scratch buffer but left in its queue (a
     peek): they decide two things below. Once per connect attempt. */
  ssize_t early = prefix_len == 0 && !ended ? recv(cfd, r->scratch, SCRATCH_SIZE, MSG_PEEK | MSG_DONTWAIT) : -1;
  /* The handshake's last ACK rides on the first bytes when there are bytes to send at once — a
     PROXY header, or a request the client has sent (HAProxy's tcp-smart-connect): one segment
     fewer per connection for both ends to process. Only then: with nothing to send the kernel
     would hold that ACK up to 200 ms (TCP_DELACK_MAX), and a server-first protocol (MySQL's
     greeting) waits for it. The kernel leaves this mode when it sends the ACK. */
  if (prefix_len > 0 || early > 0) {
    int off = 0;
    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &off, sizeof(off));
  }
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
  /* On loopback (and often on a LAN) the handshake has completed inside connect(): with nothing to
     send first and the client still open, the session relays from here and the result says so
     (CONNECT_DONE) — no EV_CONNECTED a wake later, one call into JS and one epoll_ctl fewer per
     connection. With the client's bytes waiting, sending them is the test: send() takes them on
     an established socket and answers EAGAIN on one still connecting (and the connect's error on
     one that failed). What it took is then taken from the client's queue; until then the bytes
     stay there, so a connect still in progress, or failed and retried on another backend, loses
     none. Otherwise a zero-timeout poll() tells. A socket still connecting takes the wake. */
  if (early > 0) {
    ssize_t w = send(fd, r->scratch, (size_t)early, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      /* Only this thread reads the client, and its queue holds at least `early` bytes. */
      ssize_t taken = recv(cfd, r->scratch, (size_t)w, MSG_DONTWAIT);
      st[STAT_BYTES_IN] += (double)(taken > 0 ? taken : 0);
      st[STAT_ACTIVITY] += 1;
      s->state = ST_RELAY;
      /* The client's registration reports what is left in its queue, if anything. A failure here
         cannot be retried elsewhere (the backend has the bytes, the client's queue does not):
         a local one, the client is closed (ENOMEM and ENOSPC are in src/local-errors.ts). */
      if ((err = poll_side(r, s, SERVER, RELAY_EVENTS)) != 0 || (err = poll_side(r, s, CLIENT, RELAY_EVENTS)) != 0) {
        if (err != -ENOMEM && err != -ENOSPC) err = -ENOMEM;
        goto fail;
      }
      return int_value(env, CONNECT_DONE);
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      err = -errno; /* refused, unreachable, …: as EV_CONNECT_FAILED would say */
      goto fail;
    }
  } else {
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    if (prefix_len == 0 && !ended && poll(&pf, 1, 0) == 1 && pf.revents == POLLOUT) {
      s->state = ST_RELAY;
      if ((err = poll_side(r, s, SERVER, RELAY_EVENTS)) != 0 || (err = poll_side(r, s, CLIENT, RELAY_EVENTS)) != 0) goto fail;
      return int_value(env, CONNECT_DONE);
    }
  }
  /* Writable once connected; an error or HUP if it failed (on_connect_done). */
  if ((err = poll_side(r, s, SERVER, EPOLLOUT)) != 0) goto fail;
  return int_value(env, 0);
fail:
  free_session(r, s, 1);
  return int_value(env, err);
}

/* watch(slot, clientFd) → 0 or a negative errno: EV_CLIENT_GONE when a waiting client (accepted here) leaves. */
static napi_value js_watch(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t slot;
  int32_t cfd;
  if (!args(env, info, &r, "watch(slot, clientFd)", "sd", &slot, &cfd)) return NULL;
  int err;
  Session *s = open_session(r, slot, cfd, 1, &err);
  if (s == NULL) return int_value(env, err);
  s->state = ST_WATCH;
  if ((err = poll_side(r, s, CLIENT, EPOLLRDHUP)) != 0) free_session(r, s, 1);
  return int_value(env, err);
}

/*
 * stop(slot, keepClient) → whether the slot had a session. Its sockets are closed, except the
 * client when kept (a dequeued or retried session) or owned by a Node handle; no event follows.
 */
static napi_value js_stop(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t slot;
  bool keep;
  napi_value result;
  if (!args(env, info, &r, "stop(slot, keepClient)", "sb", &slot, &keep)) return NULL;
  Session *s = slot < r->nslots ? r->slots[slot] : NULL;
  if (s != NULL) free_session(r, s, keep);
  napi_get_boolean(env, s != NULL, &result);
  return result;
}

/*
 * closeFd(fd) → 0, or -EBADF for an fd that is not a client this relay accepted and JS holds
 * outside a session (refused, queued, failed connects): nothing else is closed.
 */
static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  Relay *r;
  int32_t fd;
  if (!args(env, info, &r, "closeFd(fd)", "d", &fd)) return NULL;
  if (!fd_is(r, fd, FD_HELD)) return int_value(env, -EBADF);
  close_fd(r, fd);
  return int_value(env, 0);
}

/* localAddress(fd, out: Int32Array) → 0 or a negative errno; out: family << 16 | port, address bytes. */
static napi_value js_local_address(napi_env env, napi_callback_info info) {
  Relay *r;
  int32_t fd;
  void *out;
  size_t n;
  if (!args(env, info, &r, "localAddress(fd, Int32Array(5))", "dI", &fd, &out, &n)) return NULL;
  if (n < 5) return throw_msg(env, "relay: localAddress(fd, Int32Array(5)) expected");
  if (!fd_is(r, fd, FD_HELD) && !fd_is(r, fd, FD_CLIENT)) return int_value(env, -EBADF);
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return int_value(env, -errno);
  encode_address(&ss, out);
  return int_value(env, 0);
}

/*
 * socketOptions(fd, out: Int32Array(8)) → 0 or a negative errno: what the kernel says of a TCP
 * socket's SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, SO_LINGER (on, seconds), local
 * and peer port. Reads only (any fd of the process: it changes and closes nothing); for tests and
 * diagnosis, so what tcp_keepalive and propagate_reset set is seen as the kernel has it.
 */
static napi_value js_socket_options(napi_env env, napi_callback_info info) {
  int32_t fd;
  void *outv;
  size_t n;
  if (!args(env, info, NULL, "socketOptions(fd, Int32Array(8))", "dI", &fd, &outv, &n)) return NULL;
  if (n < 8) return throw_msg(env, "relay: socketOptions(fd, Int32Array(8)) expected");
  int32_t *out = outv;
  socklen_t len = sizeof(int);
  struct linger lg = {0, 0};
  socklen_t llen = sizeof(lg);
  if (getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &out[0], &len) != 0) return int_value(env, -errno);
  len = sizeof(int);
  getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &out[1], &len);
  len = sizeof(int);
  getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &out[2], &len);
  len = sizeof(int);
  getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &out[3], &len);
  getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &llen);
  out[4] = lg.l_onoff;
  out[5] = lg.l_linger;
  struct sockaddr_storage ss;
  int32_t a[5] = {0};
  socklen_t slen = sizeof(ss);
  out[6] = out[7] = 0;
  if (getsockname(fd, (struct sockaddr *)&ss, &slen) == 0) {
    encode_address(&ss, a);
    out[6] = a[0] & 0xffff;
  }
  slen = sizeof(ss);
  if (getpeername(fd, (struct sockaddr *)&ss, &slen) == 0) {
    encode_address(&ss, a);
    out[7] = a[0] & 0xffff;
  }
  return int_value(env, 0);
}

/*
 * notify(socketPath: string, message: string) → 0 or a negative errno: one datagram on an
 * AF_UNIX socket, the sd_notify protocol ($NOTIFY_SOCKET; "@name" is an abstract name). Node's
 * dgram has no AF_UNIX sockets. Called by src/ops/notify.ts on the main thread (needs no init()):
 * at readiness, around reloads, at stop, and every half watchdog interval. Never blocks: a full
 * receiver is -EAGAIN, the caller's to log.
 */
static napi_value js_notify(napi_env env, napi_callback_info info) {
  napi_value path_v, message_v;
  if (!args(env, info, NULL, "notify(socketPath: string, message: string)", "vv", &path_v, &message_v)) return NULL;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  char path[sizeof(addr.sun_path) + 1];
  size_t plen;
  if (napi_get_value_string_utf8(env, path_v, NULL, 0, &plen) != napi_ok) {
    return throw_msg(env, "relay: notify(socketPath: string, message: string) expected");
  }
  /* A path keeps its NUL inside sun_path; an abstract name ("@…") has none. */
  if (plen > sizeof(addr.sun_path)) return int_value(env, -ENAMETOOLONG);
  napi_get_value_string_utf8(env, path_v, path, sizeof(path), &plen);
  if (plen < 2 || (path[0] != '/' && path[0] != '@')) return int_value(env, -EINVAL);
  if (path[0] == '/' && plen == sizeof(addr.sun_path)) return int_value(env, -ENAMETOOLONG);
  memcpy(addr.sun_path, path, plen);
  if (path[0] == '@') addr.sun_path[0] = 0; /* abstract: the length, not a NUL, ends the name */
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '/'));
  size_t mlen;
  if (napi_get_value_string_utf8(env, message_v, NULL, 0, &mlen) != napi_ok) {
    return throw_msg(env, "relay: notify(socketPath: string, message: string) expected");
  }
  char *message = malloc(mlen + 1);
  if (message == NULL) return int_value(env, -ENOMEM);
  napi_get_value_string_utf8(env, message_v, message, mlen + 1, &mlen);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int rc = 0;
  if (fd < 0) {
    rc = -errno;
  } else {
    if (sendto(fd, message, mlen, MSG_NOSIGNAL, (struct sockaddr *)&addr, alen) < 0) rc = -errno;
    close(fd);
  }
  free(message);
  return int_value(env, rc);
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
  SET("statDgramsIn", STAT_DGRAMS_IN);
  SET("statDgramsOut", STAT_DGRAMS_OUT);
  SET("evUdpNew", EV_UDP_NEW);
  SET("evUdpFailed", EV_UDP_FAILED);
  SET("evUdpEnded", EV_UDP_ENDED);
  SET("endMoved", END_MOVED);
  SET("connectDone", CONNECT_DONE);
  SET("nodeAbi", FULCRUM_NODE_ABI);
  SET("sanitized", RELAY_SANITIZED);
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
    {"adopt", NULL, js_adopt, NULL, NULL, NULL, napi_default, NULL},
    {"listenerFd", NULL, js_listener_fd, NULL, NULL, NULL, napi_default, NULL},
    {"handedOver", NULL, js_handed_over, NULL, NULL, NULL, napi_default, NULL},
    {"resume", NULL, js_resume, NULL, NULL, NULL, napi_default, NULL},
    {"pause", NULL, js_pause, NULL, NULL, NULL, napi_default, NULL},
    {"keepAlive", NULL, js_keep_alive, NULL, NULL, NULL, napi_default, NULL},
    {"connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL},
    {"watch", NULL, js_watch, NULL, NULL, NULL, napi_default, NULL},
    {"stop", NULL, js_stop, NULL, NULL, NULL, napi_default, NULL},
    {"closeFd", NULL, js_close_fd, NULL, NULL, NULL, napi_default, NULL},
    {"localAddress", NULL, js_local_address, NULL, NULL, NULL, napi_default, NULL},
    {"socketOptions", NULL, js_socket_options, NULL, NULL, NULL, napi_default, NULL},
    {"quiesce", NULL, js_quiesce, NULL, NULL, NULL, napi_default, NULL},
    {"notify", NULL, js_notify, NULL, NULL, NULL, napi_default, NULL},
    {"constants", NULL, js_constants, NULL, NULL, NULL, napi_default, NULL},
    {"udpInit", NULL, js_udp_init, NULL, NULL, NULL, napi_default, NULL},
    {"udpListenerFd", NULL, js_udp_listener_fd, NULL, NULL, NULL, napi_default, NULL},
    {"udpListen", NULL, js_udp_listen, NULL, NULL, NULL, napi_default, NULL},
    {"udpConfigure", NULL, js_udp_configure, NULL, NULL, NULL, napi_default, NULL},
    {"udpCloseListener", NULL, js_udp_close_listener, NULL, NULL, NULL, napi_default, NULL},
    {"udpConnect", NULL, js_udp_connect, NULL, NULL, NULL, napi_default, NULL},
    {"udpMove", NULL, js_udp_move, NULL, NULL, NULL, napi_default, NULL},
    {"udpClose", NULL, js_udp_close, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}