/*
 * The relay's shared definitions: the constants relay.ts checks (constants()), the session, the
 * per-worker relay, and what its files give each other:
 *
 *   relay.c    the N-API surface: argument checks (one helper, args()), init, connect, watch,
 *              stop, closeFd, localAddress, socketOptions, constants, notify (sd_notify's
 *              datagram); the worker's teardown
 *   listen.c   the listeners: listen, adopt, close, pause/resume, quiesce; their N-API functions
 *   loop.c     the event loop and the sessions: epoll wake, accept, connect completion, moving
 *              bytes both ways with backpressure and half-close, the events for JS, fd ownership
 *   handoff.c  the registry of relays (one per worker thread) and the hand-over of connections
 *              from a busier relay to a quieter one listening on the same address
 *   udp.c      UDP services: a datagram socket per service, a connected socket per flow, batched
 *              system calls (recvmmsg, sendmmsg); its own N-API functions (udp*)
 *
 * Everything is hidden (-fvisibility=hidden, build/relay.ts) but the module's init.
 */
#ifndef FULCRUM_RELAY_H
#define FULCRUM_RELAY_H
#define _GNU_SOURCE /* accept4 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <linux/filter.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

/* The event layout (EV_*, END_*, STAT_*, MAX_EVENTS, MAX_ACCEPT) and the Node this relay is built
   for (FULCRUM_NODE_ABI, FULCRUM_NODE_VERSION), generated from src/shm/layout.ts by build/relay.ts. */
#include "relay-layout.h"

/* Keep in step with relay.ts (checked there against constants()). */
#ifndef RELAY_VERSION /* tests build a relay of another version to see it refused */
#define RELAY_VERSION 8
#endif
/* connect()'s result when the backend was connected within the call (relay.ts CONNECT_DONE). */
#define CONNECT_DONE 1
/* Built with AddressSanitizer (build/relay.ts --sanitize): constants().sanitized says so, and
   transport-relay.ts then hands it only buffers of their own allocation (an over-read is caught). */
#if defined(__SANITIZE_ADDRESS__)
#define RELAY_SANITIZED 1
#else
#define RELAY_SANITIZED 0
#endif
#define CLIENT 0
#define SERVER 1
#define LISTENER 2
#define INBOX 3 /* the relay's eventfd: connections another relay handed over */
#define UDP_LISTENER 4 /* a UDP service's socket (udp.c; id: its UDP listener id) */
#define UDP_FLOW 5     /* a UDP flow's socket connected to its backend (udp.c; id: its slot) */

/* Per read: the JS path's largest read buffer (transport-js.ts READ_BUFFER_SIZE). */
#define SCRATCH_SIZE (64 * 1024)

enum { ST_WATCH = 1, ST_CONNECTING, ST_RELAY };

/*
 * What an fd is to this relay, so that JavaScript can only hand back what it was given:
 *   FD_HELD    accepted here (EV_ACCEPT) and held by JS, in no session: connect, watch, closeFd
 *   FD_CLIENT  accepted here, the client of a session (closed with it, or FD_HELD again if kept)
 *   FD_LENT    a Node handle's socket lent to a session (ownClient false): never closed here
 *   FD_OWN     the relay's own: backend sockets, listeners, the epoll set, the inbox
 */
enum { FD_NONE = 0, FD_HELD, FD_CLIENT, FD_LENT, FD_OWN };

/* A relayed socket's registration: edge-triggered reads and the peer's FIN, once per socket
   (loop.c explains the rules); EPOLLOUT is added on the first backpressure (want_out). */
#define RELAY_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLET)

/* Slots JS may use: the epoll key (key_of) keeps 29 bits for a slot or listener id. */
#define MAX_SLOTS (1u << 29)

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
  uint8_t rdhup[2]; /* an event said the peer's FIN had arrived: read to EOF (loop.c on_readable) */
  Dir dir[2];     /* dir[CLIENT]: client → server; dir[SERVER]: server → client */
  uint32_t slot;
  int state;
  int cause;      /* END_* of the first EOF, 0 before */
  uint8_t propagate_reset; /* the service's propagate_reset: a side's reset resets the other (reset_other) */
} Session;

/* connect()'s and keepAlive()'s options (an Int32Array of OPT_FIELDS, OPT_* from relay-layout.h)
   are filled by transport-relay.ts per call. */

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
  /* The wake protocol of the inbox (handoff.c steer, loop.c on_poll): `awake` is 1 while this
     relay is in on_poll, which takes the inbox before it returns, so a hand-over then writes no
     eventfd; `inbox_pending` is 1 while the inbox holds connections. Sequentially consistent,
     as a pair: a relay going to sleep either sees the pending flag or is seen asleep. */
  _Atomic int awake;
  _Atomic int inbox_pending;
  struct sockaddr_storage *lkeys; /* the bound address per listener id (under g_lock) */
  napi_async_cleanup_hook_handle cleanup;
  Session **slots;
  uint32_t nslots;
  int *listeners; /* fd per listener id, -1: free */
  uint32_t nlisteners;
  uint32_t refs;  /* sessions + listeners: the poll handle keeps the loop alive while > 0 */
  /* What each fd is to this relay (FD_*), by fd. Client sockets accepted here (FD_HELD,
     FD_CLIENT) are closed when the worker goes away, whatever JS holds them for (a crash must not
     leak connections); JS may name only its own fds (fd_is, the N-API checks). */
  uint8_t *fds;
  uint32_t nfds;
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
  struct Udp *udp;    /* UDP services (udp.c), from udpInit() on; NULL before */
  uint8_t scratch[SCRATCH_SIZE];
} Relay;

/* The epoll key of one socket: id (slot or listener, < MAX_SLOTS), kind (3 bits) and fd (a key whose fd no longer matches is stale). */
static inline uint64_t key_of(uint32_t id, int kind, int fd) {
  return ((uint64_t)id << 35) | ((uint64_t)kind << 32) | (uint32_t)fd;
}
#define KEY_ID(k) ((uint32_t)((k) >> 35))
#define KEY_KIND(k) ((int)(((k) >> 32) & 7))
#define KEY_FD(k) ((int)(uint32_t)(k))

static inline int room_to_accept(Relay *r) {
  return (size_t)(r->nev + 2 * MAX_EVENTS + 1) * EV_FIELDS <= r->events_len;
}

/* ── loop.c ── */
void ref_up(Relay *r);
void ref_down(Relay *r);
int32_t *push_event(Relay *r, int type, uint32_t id, int32_t a);
int fd_is(Relay *r, int fd, int state);
int track_fd(Relay *r, int fd, int state);
void untrack_fd(Relay *r, int fd);
void close_fd(Relay *r, int fd);
int remember(Relay *r, int fd, int count);
Session *new_session(Relay *r, uint32_t slot, int *err);
void free_session(Relay *r, Session *s, int keep_client);
int poll_side(Relay *r, Session *s, int side, uint32_t want);
void encode_address(const struct sockaddr_storage *ss, int32_t out[5]);
void on_poll(uv_poll_t *h, int status, int events);

/* ── relay.c (the N-API helpers udp.c shares) ── */
int args(napi_env env, napi_callback_info info, Relay **r, const char *usage, const char *fmt, ...);
napi_value int_value(napi_env env, int32_t v);
napi_value throw_msg(napi_env env, const char *msg);
napi_value close_failed(napi_env env, Relay *r, int fd);

/* ── listen.c ── */
napi_value js_listen(napi_env env, napi_callback_info info);
napi_value js_adopt(napi_env env, napi_callback_info info);
napi_value js_handed_over(napi_env env, napi_callback_info info);
napi_value js_listener_fd(napi_env env, napi_callback_info info);
napi_value js_close_listener(napi_env env, napi_callback_info info);
napi_value js_pause(napi_env env, napi_callback_info info);
napi_value js_resume(napi_env env, napi_callback_info info);
napi_value js_quiesce(napi_env env, napi_callback_info info);

/* ── udp.c ── */
void udp_on_listener(Relay *r, uint32_t lid, int fd);
void udp_on_flow(Relay *r, uint32_t slot, int fd, uint32_t events);
void udp_flush(Relay *r);
void udp_cleanup(Relay *r);
napi_value js_udp_init(napi_env env, napi_callback_info info);
napi_value js_udp_listener_fd(napi_env env, napi_callback_info info);
napi_value js_udp_listen(napi_env env, napi_callback_info info);
napi_value js_udp_configure(napi_env env, napi_callback_info info);
napi_value js_udp_close_listener(napi_env env, napi_callback_info info);
napi_value js_udp_connect(napi_env env, napi_callback_info info);
napi_value js_udp_move(napi_env env, napi_callback_info info);
napi_value js_udp_close(napi_env env, napi_callback_info info);

/* ── handoff.c ── */
/* Guards the registry, the inboxes and the listener tables other relays read (listeners, lkeys). */
extern pthread_mutex_t g_lock;
extern _Atomic int32_t g_load[];
void register_relay(Relay *r);
void unregister_relay(Relay *r);
int steer(Relay *r, uint32_t lid, int fd, const int32_t from[5]);
void adopt(Relay *r);
void take_inbox(Relay *r);
int drain_listener(Relay *r, uint32_t lid, int lfd);

#endif
