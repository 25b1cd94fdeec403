/*
 * The relay's listeners (relay.h says what each file holds): listen, adopt (a socket handed over
 * by `fulcrum upgrade`), close (its queue accepted and served first), pause/resume (the
 * descriptor reserve), the listener tables other relays read while steering, and the quiesce
 * filter a drained BGP node puts on every listener. Called from JavaScript at start, reload,
 * upgrade and stop — never per connection.
 */
#include "relay.h"

/* A free listener id (the tables grown when full), or a negative errno. */
static int32_t listener_slot(Relay *r) {
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
      /* No address until listened on: a closed listener's is matched by handoff.c's adopt(). */
      memset(&keys[r->nlisteners], 0, (n - r->nlisteners) * sizeof(struct sockaddr_storage));
      for (uint32_t i = r->nlisteners; i < n; i++) r->listeners[i] = -1;
      r->nlisteners = n;
    }
    pthread_mutex_unlock(&g_lock);
    if (keys == NULL) return -ENOMEM;
  }
  return (int32_t)lid;
}

/* Puts a listening socket under `lid`: polled for EV_ACCEPT, its address kept for steering. 0 or -errno (fd not closed). */
static int install_listener(Relay *r, uint32_t lid, int fd) {
  struct epoll_event e;
  e.events = EPOLLIN;
  e.data.u64 = key_of(lid, LISTENER, fd);
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &e) != 0) return -errno;
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  int err = getsockname(fd, (struct sockaddr *)&bound, &blen) != 0 ? -errno : track_fd(r, fd, FD_OWN) ? 0 : -ENOMEM;
  if (err != 0) {
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    return err;
  }
  pthread_mutex_lock(&g_lock);
  r->listeners[lid] = fd;
  r->lkeys[lid] = bound;
  pthread_mutex_unlock(&g_lock);
  ref_up(r);
  return 0;
}

/* listen(ip, port, family, reusePort, backlog) → listener id, or a negative errno. */
napi_value js_listen(napi_env env, napi_callback_info info) {
  static const char usage[] = "listen(ip, port, family, reusePort, backlog)";
  Relay *r;
  struct sockaddr_storage ss;
  socklen_t len;
  int32_t backlog;
  int valid;
  bool reuse;
  if (!args(env, info, &r, usage, "Abi", &ss, &len, &valid, &reuse, &backlog)) return NULL;
  if (!valid) return int_value(env, -EINVAL);
  int32_t lid = listener_slot(r);
  if (lid < 0) return int_value(env, lid);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_value(env, -errno);
  int on = 1, err;
  /* As libuv: SO_REUSEADDR (restart while old connections are in TIME_WAIT); SO_REUSEPORT so the
     workers' listeners share the address and the kernel spreads connections among them;
     TCP_NODELAY, which accepted sockets inherit. */
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if ((reuse && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) || bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0) {
    err = -errno;
  } else if ((err = install_listener(r, (uint32_t)lid, fd)) == 0) {
    return int_value(env, lid);
  }
  close(fd);
  return int_value(env, err);
}

/*
 * adopt(fd) → listener id, or a negative errno: a listening TCP socket made elsewhere — one a
 * previous fulcrum handed over on `fulcrum upgrade` (src/control/upgrade.ts) — polled as listen()'s
 * are. The relay owns the fd from here (closeListener closes it). Refused with -ENOTSOCK / -EINVAL
 * (not a listening stream socket) or -EBADF (already one of this relay's): such an fd is left alone.
 */
napi_value js_adopt(napi_env env, napi_callback_info info) {
  Relay *r;
  int32_t fd;
  if (!args(env, info, &r, "adopt(fd)", "d", &fd)) return NULL;
  if (!fd_is(r, fd, FD_NONE)) return int_value(env, -EBADF);
  int type = 0, listening = 0, on = 1;
  socklen_t n = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n) != 0) return int_value(env, -errno);
  n = sizeof(listening);
  if (type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) != 0 || !listening) return int_value(env, -EINVAL);
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return int_value(env, -errno);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  int32_t lid = listener_slot(r);
  if (lid < 0) return int_value(env, lid);
  int err = install_listener(r, (uint32_t)lid, fd);
  return int_value(env, err == 0 ? lid : err);
}

/* handedOver() → connections other relays handed to this one (handoff.c) that it has not reported
   yet: a draining worker waits for these too before it ends (they are accepted connections). */
napi_value js_handed_over(napi_env env, napi_callback_info info) {
  Relay *r;
  if (!args(env, info, &r, "handedOver()", "")) return NULL;
  pthread_mutex_lock(&g_lock);
  uint32_t n = r->ninbox;
  pthread_mutex_unlock(&g_lock);
  return int_value(env, (int32_t)n);
}

/* listenerFd(id) → the listener's fd (what `fulcrum upgrade` hands to the next process), or -EBADF. */
napi_value js_listener_fd(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  if (!args(env, info, &r, "listenerFd(id)", "l", &lid)) return NULL;
  return int_value(env, lid < r->nlisteners && r->listeners[lid] >= 0 ? r->listeners[lid] : -EBADF);
}

/* The listener named by the call's one argument, or 0 (unknown ids are ignored: closed already). */
static int listener_arg(napi_env env, napi_callback_info info, Relay **r, uint32_t *lid) {
  if (!args(env, info, r, "a listener id", "l", lid)) return 0;
  return *lid < (*r)->nlisteners && (*r)->listeners[*lid] >= 0;
}

/* closeListener(id): stops accepting and closes the socket (connections accepted stay). */
napi_value js_close_listener(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  if (!listener_arg(env, info, &r, &lid)) return NULL;
  pthread_mutex_lock(&g_lock);
  /* What the kernel queued on it is accepted first and served (handoff.c drain_listener). */
  drain_listener(r, lid, r->listeners[lid]);
  /* Out of the epoll set first: after an upgrade the next process holds this socket too, and an
     epoll registration lasts as long as the socket does, not this fd (close alone would leave it). */
  epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->listeners[lid], NULL);
  close_fd(r, r->listeners[lid]);
  r->listeners[lid] = -1;
  pthread_mutex_unlock(&g_lock);
  ref_down(r);
  return NULL;
}

/* pause(id): stops polling a listener (the descriptor reserve's mark): new connections wait in its backlog. */
napi_value js_pause(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  if (!listener_arg(env, info, &r, &lid)) return NULL;
  struct epoll_event e = {0};
  e.data.u64 = key_of(lid, LISTENER, r->listeners[lid]);
  epoll_ctl(r->epfd, EPOLL_CTL_MOD, r->listeners[lid], &e);
  return NULL;
}

/* resume(id): polls a listener again after EV_ACCEPT_ERROR or pause() stopped it. */
napi_value js_resume(napi_env env, napi_callback_info info) {
  Relay *r;
  uint32_t lid;
  if (!listener_arg(env, info, &r, &lid)) return NULL;
  struct epoll_event e;
  e.events = EPOLLIN;
  e.data.u64 = key_of(lid, LISTENER, r->listeners[lid]);
  epoll_ctl(r->epfd, EPOLL_CTL_MOD, r->listeners[lid], &e);
  return NULL;
}

/*
 * The quiesce filter (classic BPF, SO_ATTACH_FILTER: no capability needed). In tcp_v4_rcv and
 * tcp_v6_rcv a listener's socket filter (tcp_filter) runs before LISTEN processing, and also for
 * the ACK that completes a pending handshake (a NEW_SYN_RECV request is filtered by its
 * listener), with the segment seen from its TCP header. So this program drops exactly the pure
 * SYNs (SYN set, ACK clear): a new client gets no answer and retransmits its SYN (initial RTO
 * 1 s), neither refused nor accepted, while handshakes under way and established connections go
 * on. A socket accepted while it is attached inherits it (sk_clone_lock): it then drops SYNs
 * only, which an established connection is never sent but by a client reusing its port.
 */
static struct sock_filter quiesce_code[] = {
  BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),          /* the TCP flags byte */
  BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),       /* SYN | ACK */
  BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1), /* SYN without ACK: */
  BPF_STMT(BPF_RET | BPF_K, 0),                    /*   dropped */
  BPF_STMT(BPF_RET | BPF_K, 0xffffffff),           /* anything else: kept whole */
};

/*
 * quiesce(fd, on) → 0 or a negative errno: attaches (on) or detaches the quiesce filter on a
 * listening TCP socket of this process. Any other fd is refused with -EBADF and left alone
 * (ENOTSOCK, not listening, not TCP): this is the one call that changes an fd JS names without
 * the relay having made it (a Node server's listener on the JavaScript path). Detaching a filter
 * that is not there is 0. Called by worker.ts on every listener of a quiesced service: when
 * src/bgp drains the node, and at each bind while it is drained — never per connection.
 */
napi_value js_quiesce(napi_env env, napi_callback_info info) {
  int32_t fd;
  bool on;
  if (!args(env, info, NULL, "quiesce(fd, on: boolean)", "db", &fd, &on)) return NULL;
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) != 0 || v != 1) return int_value(env, -EBADF);
  len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) != 0 || v != IPPROTO_TCP) return int_value(env, -EBADF);
  if (on) {
    struct sock_fprog prog = {.len = sizeof(quiesce_code) / sizeof(quiesce_code[0]), .filter = quiesce_code};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0) return int_value(env, -errno);
  } else if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &v, sizeof(v)) != 0 && errno != ENOENT) {
    return int_value(env, -errno);
  }
  return int_value(env, 0);
}
