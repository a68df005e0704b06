/*
 * natkit.server._turnfast: the data path of natkit's TURN relay.
 *
 * A CPython extension module (limited API) built at install time by setup.py and wrapped by
 * natkit/server/_turn_fast.py; without it (not built, or NATKIT_NO_CEXT=1) the relay runs its
 * pure-Python data path. Python (the sans-IO engine) stays the authority on every allocation,
 * permission and channel; the adapter mirrors the engine's Offload events into the table here:
 *
 *   client -> peer: (listener fd, client address, channel) -> (relay fd, peer address, until)
 *   peer -> client: (relay fd, peer address)                -> (listener fd, client address,
 *                                                              channel, until)
 *
 * and, for Send and Data indications, each allocation and permission:
 *
 *   allocation: (listener fd, client address, 1) -> (IPv4 relay fd, IPv6 relay fd in ip[0:4])
 *   permission: (relay fd, peer IP, port 0, 2)    -> (listener fd, client address, until)
 *
 * "until" is min(channel expiry, permission expiry) for channels, the permission's expiry for
 * permissions; an entry past it is not used. A client -> peer entry whose value has chan ==
 * NK_INTERNAL names a peer that is a relayed address of this same server: value fd is that
 * relay's socket and the address is the sending allocation's relayed address, so the
 * datagram goes straight to the other allocation's client through the peer -> client entries
 * of that relay, as if it had arrived there from the network (nothing is sent to the relay's
 * own address); without such an entry it goes to Python.
 *
 * The sockets are watched by an epoll instance of the context. In thread mode (start()) a C
 * thread of the context runs the epoll loop with the GIL never taken: it drains every ready
 * socket with recvmmsg, forwards every datagram an entry covers (ChannelData and plain Send
 * indications from clients to peers; peer datagrams to clients as ChannelData or Data
 * indications) and queues everything else (other STUN messages, anything unusual) for Python,
 * which has the last word: an eventfd becomes readable and take() hands the records over. The
 * asyncio loop is never woken for a forwarded packet. poll() and pump() do the same work once
 * in the caller's thread (tests, and hosts that do not start the thread).
 *
 * With GRO on (set_gro), watched sockets ask the kernel for UDP GRO: datagrams of one source
 * that arrive together may come up as one read with their segment size (a UDP_GRO cmsg), and
 * each segment is handled as the datagram it was.
 *
 * Sends are batched: what one round of reads produced is queued (pointing into the receive
 * slots), then datagrams of the same size to the same destination through the same socket
 * leave as one UDP GSO message (UDP_SEGMENT: the kernel splits it into the same datagrams,
 * each still its own UDP datagram on the wire) and all of one socket's messages in one
 * sendmmsg. Where GSO is missing or a device refuses it, each datagram is its own message.
 * Nothing is allocated per packet.
 *
 * TCP clients (RFC 8656 12.5): once an allocation exists, Python may hand a client's
 * connection over (stream_attach with a dup of its socket, then stream_start with the bytes
 * it had read past the last whole frame). The thread then owns its reads and writes: it splits
 * the stream into STUN messages and ChannelData frames (padded to 4 bytes), forwards what the
 * entries cover (keyed by that fd like a listener's, so the same tables decide), and hands
 * every other frame to Python in order, as a record of kind NK_KIND_STREAM. Peer datagrams
 * for such a client are framed into its output buffer and leave in one send per client per
 * turn of the loop; Python's own messages (responses) join the same buffer (stream_send), so
 * the byte order on the wire is the order they were made. Relayed data over NK_SOUT_LIMIT
 * queued for one client is dropped (the peer's UDP cannot be slowed down, and late media is
 * worthless); the server's own messages may take the buffer to NK_SOUT_HARD, beyond which the
 * client is cut. End of stream, a reset or bytes that frame as neither STUN nor ChannelData
 * end the stream: a NK_REC_CLOSED record tells Python, which closes the connection and calls
 * stream_release. TLS connections stay in Python.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_turnctl.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NK_BATCH 64                /* datagrams per recvmmsg */
#define NK_SLOTS (4 * NK_BATCH)    /* receive slots: batches being read + datagrams queued */
#define NK_SLOT 65536
#define NK_GSO_MAX 64              /* segments per UDP GSO send (the kernel's UDP_MAX_SEGMENTS) */
#define NK_GSO_BYTES 65000         /* payload bytes per GSO send: one IP datagram's worth */
#define NK_KIND_ALLOC 1
#define NK_KIND_PERM 2
#define NK_INTERNAL 1              /* val.chan of a client -> peer entry: the peer is a relay here */
#define NK_MAGIC 0x2112A442u
#define NK_PYQ (8u << 20)          /* bytes of datagrams waiting for Python (thread mode) */
#define NK_WAKE UINT64_MAX         /* epoll data of the thread's stop eventfd */
#define NK_KIND_STREAM 2           /* a watched TCP client connection the C side owns */
#define NK_REC_CLOSED 3            /* nk_rec.kind: that stream ended (nk_rec.port: NK_CLOSE_*) */
#define NK_REC_MADE 4              /* nk_rec.kind: an allocation the control path made (two
                                    * records: struct nk_ctl_made's head + user, then the reply) */
#define NK_FRAME_MAX (20 + 65532)  /* the longest frame a stream carries (a STUN message) */
#define NK_SREAD (128u << 10)      /* bytes per stream read */
#define NK_SBUF (4u * (NK_SREAD + NK_FRAME_MAX)) /* stream reads queued datagrams point into */
#define NK_SOUT_LIMIT (1u << 20)   /* relayed bytes queued for one stream client: beyond, dropped */
#define NK_SOUT_HARD (2u << 20)    /* with the server's own messages: beyond, the client is cut */
#define NK_HOLD_TURNS 8            /* loop turns a stream write may wait for more input */
#define NK_HOLD_BYTES (64u << 10)  /* ... or until this much waits */
enum { NK_CLOSE_EOF = 0, NK_CLOSE_ERROR = 1, NK_CLOSE_FRAMING = 2, NK_CLOSE_OVERFLOW = 3 };
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#pragma pack(push, 1)
struct nk_key { /* 32 bytes; chan = 0 for peer -> client keys */
    int32_t fd;
    uint16_t port;
    uint16_t chan;
    uint8_t ip[16];
    uint8_t family; /* 4 or 6 */
    uint8_t pad[7];
};
struct nk_val { /* 40 bytes */
    int32_t fd;
    uint16_t port;
    uint16_t chan;
    uint8_t ip[16];
    uint8_t family;
    uint8_t pad[7];
    double until;
};
struct nk_rec { /* header of a datagram handed back to Python: 28 bytes */
    uint32_t len;
    int32_t fd; /* the socket it came in on */
    uint8_t family;
    uint8_t kind;
    uint16_t port;
    uint8_t ip[16];
};
#pragma pack(pop)

struct nk_slot {
    uint8_t state; /* 0 empty, 1 used, 2 deleted */
    struct nk_key key;
    struct nk_val val;
};

/* One datagram waiting to be sent: a header (may be empty) and the payload it points to. */
struct nk_out {
    int fd;
    uint8_t to_client; /* which counters it adds to */
    uint8_t hlen;
    uint16_t pad; /* zero bytes after the data (a Data indication's padding) */
    uint32_t dlen, plen; /* bytes after the header; relayed payload bytes */
    const uint8_t *data;
    struct sockaddr_storage to;
    socklen_t tolen;
    uint8_t hdr[48]; /* ChannelData header, or Data indication up to DATA's value */
};

/* A run of equal-sized datagrams to one destination through one socket: one GSO send. */
struct nk_group {
    int fd;
    unsigned first, n; /* first entry index in q.order, count */
    uint32_t seglen, plen;
    uint8_t to_client;
    const struct nk_out *head;
};

/* A TCP client connection whose reads and writes the C side owns (stream_attach/start). */
struct nk_conn {
    int fd;
    uint8_t started, dead, dirty;
    uint32_t events;       /* what epoll watches for it now */
    struct nk_key src;     /* fd, family, port, ip of the client: its keys' client half */
    uint8_t *in;           /* a partial frame carried over to the next read */
    uint32_t inlen, incap;
    uint8_t *out;          /* bytes for the client not yet written */
    uint32_t outoff, outlen, outcap;
};

struct nk_ctx {
    struct nk_slot *slots;
    uint32_t cap, used, tomb;
    uint64_t c2p_packets, c2p_bytes, p2c_packets, p2c_bytes, send_errors, passed;
    uint64_t internal_packets, py_dropped, gso_sends, sendmmsg_calls;
    uint8_t *bufs;
    unsigned slot_next; /* first receive slot no queued datagram points into */
    struct mmsghdr msgs[NK_BATCH];
    struct iovec iov[NK_BATCH];
    struct sockaddr_storage addrs[NK_BATCH];
    union {
        char b[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ictl[NK_BATCH]; /* UDP_GRO: the segment size of a coalesced read */
    int gro;           /* watched sockets ask for UDP GRO (several datagrams in one read) */
    uint64_t gro_reads;
    /* the send queue, and what flushing it builds */
    struct nk_out q[NK_SLOTS];
    unsigned qn;
    unsigned gid[NK_SLOTS];
    unsigned order[NK_SLOTS];
    struct nk_group groups[NK_SLOTS];
    unsigned gorder[NK_SLOTS];
    struct mmsghdr omsgs[NK_SLOTS];
    struct iovec oiov[3 * NK_SLOTS];
    union {
        char b[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } octl[NK_SLOTS];
    struct nk_out sendq[NK_SLOTS]; /* nk_send's: Python's batches, never the thread's */
    struct mmsghdr smsgs[NK_SLOTS];
    int gso; /* UDP GSO works (probed once; off after a send the device refused) */
    uint64_t rng;
    int epfd;
    uint8_t *out; /* datagrams for Python (poll/pump): nk_rec + data, ... */
    uint32_t outcap;
    /* the watched sockets: kind and generation per fd (a stale epoll event is skipped) */
    uint8_t *kinds;
    uint32_t *gens;
    int nfds;
    /* thread mode: one C thread runs the epoll loop; Python takes what is left for it */
    pthread_mutex_t mu;
    pthread_t thread;
    int running, stopping, wakefd, notifyfd, notified;
    double now; /* the engine's clock, as Python last set it */
    uint8_t *pyq;
    uint32_t pyq_len;
    /* streams: per fd, the connections the C side owns; those with bytes to write this turn */
    struct nk_conn **conns;
    int *dirty;
    unsigned ndirty, dirtycap;
    int *gone; /* (fd, reason) pairs of streams that ended, not yet reported to Python */
    unsigned ngone, gonecap;
    uint8_t *sbuf;
    uint32_t sbuf_used;
    uint16_t channel_max;
    uint64_t stream_reads, stream_writes, stream_dropped, stream_frames;
    uint32_t held_bytes; /* queued for stream clients since their last writes */
    /* the control fast path (_turnctl.c), once Python configures it; its replies wait in
     * ctlbuf, NK_CTL_REPLY bytes per send queue entry */
    struct nk_ctl *ctl;
    uint8_t *ctlbuf;
};

#define NK_OUTCAP (4u * NK_BATCH * (NK_SLOT + (uint32_t)sizeof(struct nk_rec)))

static uint64_t nk_hash(const struct nk_key *k) {
    const uint8_t *p = (const uint8_t *)k;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < sizeof(*k); i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static struct nk_slot *nk_find(struct nk_ctx *c, const struct nk_key *k) {
    uint32_t mask = c->cap - 1;
    uint32_t i = (uint32_t)nk_hash(k) & mask;
    for (uint32_t n = 0; n < c->cap; n++, i = (i + 1) & mask) {
        struct nk_slot *s = &c->slots[i];
        if (s->state == 0)
            return NULL;
        if (s->state == 1 && memcmp(&s->key, k, sizeof(*k)) == 0)
            return s;
    }
    return NULL;
}

static int nk_resize(struct nk_ctx *c, uint32_t cap) {
    struct nk_slot *old = c->slots;
    uint32_t oldcap = c->cap;
    struct nk_slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return -1;
    c->slots = slots;
    c->cap = cap;
    c->used = c->tomb = 0;
    for (uint32_t j = 0; j < oldcap; j++) {
        if (old[j].state != 1)
            continue;
        uint32_t i = (uint32_t)nk_hash(&old[j].key) & (cap - 1);
        while (slots[i].state == 1)
            i = (i + 1) & (cap - 1);
        slots[i] = old[j];
        c->used++;
    }
    free(old);
    return 0;
}

/* UDP GSO is used only if a 2-segment send over loopback arrives as 2 datagrams. */
#include "_gso_probe.h"

static struct nk_ctx *nk_new(int gso) {
    struct nk_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->bufs = malloc((size_t)NK_SLOTS * NK_SLOT); /* untouched pages cost no memory */
    c->out = malloc(NK_OUTCAP);                   /* untouched pages cost no memory */
    c->sbuf = malloc(NK_SBUF);                    /* untouched pages cost no memory */
    c->outcap = NK_OUTCAP;
    c->cap = 1024;
    c->slots = calloc(c->cap, sizeof(*c->slots));
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    c->wakefd = c->notifyfd = -1;
    c->gso = gso;
    c->gro = 0;
    c->channel_max = 0x7FFF;
    pthread_mutex_init(&c->mu, NULL);
    if (c->bufs == NULL || c->slots == NULL || c->out == NULL || c->sbuf == NULL || c->epfd < 0) {
        if (c->epfd >= 0)
            close(c->epfd);
        free(c->sbuf);
        free(c->bufs);
        free(c->out);
        free(c->slots);
        free(c);
        return NULL;
    }
    return c;
}

static void nk_free(struct nk_ctx *c) {
    if (c == NULL)
        return;
    close(c->epfd);
    if (c->wakefd >= 0)
        close(c->wakefd);
    if (c->notifyfd >= 0)
        close(c->notifyfd);
    pthread_mutex_destroy(&c->mu);
    free(c->bufs);
    free(c->out);
    free(c->pyq);
    free(c->slots);
    for (int fd = 0; fd < c->nfds; fd++) {
        struct nk_conn *s = c->conns ? c->conns[fd] : NULL;
        if (s != NULL) {
            close(s->fd);
            free(s->in);
            free(s->out);
            free(s);
        }
    }
    free(c->conns);
    free(c->dirty);
    free(c->gone);
    free(c->sbuf);
    free(c->kinds);
    free(c->gens);
    nk_ctl_free(c->ctl);
    free(c->ctlbuf);
    free(c);
}

/* Room for fd in the per-fd arrays. */
static int nk_grow_fds(struct nk_ctx *c, int fd) {
    if (fd < 0)
        return -1;
    if (fd < c->nfds)
        return 0;
    int n = c->nfds ? c->nfds : 256;
    while (n <= fd)
        n *= 2;
    uint8_t *kinds = realloc(c->kinds, (size_t)n);
    if (kinds == NULL)
        return -1;
    c->kinds = kinds;
    uint32_t *gens = realloc(c->gens, (size_t)n * sizeof(*gens));
    if (gens == NULL)
        return -1;
    c->gens = gens;
    struct nk_conn **conns = realloc(c->conns, (size_t)n * sizeof(*conns));
    if (conns == NULL)
        return -1;
    c->conns = conns;
    memset(c->kinds + c->nfds, 0, (size_t)(n - c->nfds));
    memset(c->gens + c->nfds, 0, (size_t)(n - c->nfds) * sizeof(*gens));
    memset(c->conns + c->nfds, 0, (size_t)(n - c->nfds) * sizeof(*conns));
    c->nfds = n;
    return 0;
}

/* Watch a socket: kind 0 client listener, 1 relay. Caller holds the lock. */
static int nk_watch(struct nk_ctx *c, int fd, int kind) {
    if (nk_grow_fds(c, fd) != 0)
        return -1;
    c->gens[fd]++;
    c->kinds[fd] = (uint8_t)kind;
    if (c->gro) { /* best effort: a kernel without UDP GRO reads one datagram at a time */
        int on = 1;
        (void)setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on));
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = ((uint64_t)c->gens[fd] << 32) | (uint32_t)fd;
    return epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int nk_unwatch(struct nk_ctx *c, int fd) {
    struct epoll_event ev;
    if (fd >= 0 && fd < c->nfds)
        c->gens[fd]++; /* events read before this are stale: the fd may be reused */
    return epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, &ev);
}

static int nk_put(struct nk_ctx *c, const struct nk_key *k, const struct nk_val *v) {
    struct nk_slot *s = nk_find(c, k);
    if (s != NULL) {
        s->val = *v;
        return 0;
    }
    if ((c->used + c->tomb + 1) * 2 > c->cap) {
        /* grow (or just sweep the tombstones) so the table is at most a quarter full */
        uint32_t cap = c->cap;
        while ((c->used + 1) * 4 > cap && cap < (1u << 30))
            cap *= 2;
        if (nk_resize(c, cap) != 0)
            return -1;
    }
    uint32_t mask = c->cap - 1;
    uint32_t i = (uint32_t)nk_hash(k) & mask;
    while (c->slots[i].state == 1)
        i = (i + 1) & mask;
    if (c->slots[i].state == 2)
        c->tomb--;
    c->slots[i].state = 1;
    c->slots[i].key = *k;
    c->slots[i].val = *v;
    c->used++;
    return 0;
}

static int nk_del(struct nk_ctx *c, const struct nk_key *k) {
    struct nk_slot *s = nk_find(c, k);
    if (s == NULL)
        return 0;
    s->state = 2;
    c->used--;
    c->tomb++;
    return 1;
}

#define NK_NSTATS 15
static void nk_stats(struct nk_ctx *c, uint64_t out[NK_NSTATS]) {
    out[0] = c->c2p_packets;
    out[1] = c->c2p_bytes;
    out[2] = c->p2c_packets;
    out[3] = c->p2c_bytes;
    out[4] = c->send_errors;
    out[5] = c->passed;
    out[6] = c->internal_packets;
    out[7] = c->py_dropped;
    out[8] = c->gso_sends;
    out[9] = c->sendmmsg_calls;
    out[10] = c->gro_reads;
    out[11] = c->stream_reads;
    out[12] = c->stream_writes;
    out[13] = c->stream_dropped;
    out[14] = c->stream_frames;
}

static void nk_key_from(struct nk_key *k, int fd, const struct sockaddr_storage *a, uint16_t chan) {
    memset(k, 0, sizeof(*k));
    k->fd = fd;
    k->chan = chan;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        k->family = 4;
        k->port = ntohs(s->sin_port);
        memcpy(k->ip, &s->sin_addr, 4);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        k->family = 6;
        k->port = ntohs(s->sin6_port);
        memcpy(k->ip, &s->sin6_addr, 16);
    }
}

static socklen_t nk_sockaddr(struct sockaddr_storage *out, uint8_t family, uint16_t port,
                             const uint8_t ip[16]) {
    memset(out, 0, sizeof(*out));
    if (family == 4) {
        struct sockaddr_in *s = (struct sockaddr_in *)out;
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        memcpy(&s->sin_addr, ip, 4);
        return sizeof(*s);
    }
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)out;
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    memcpy(&s->sin6_addr, ip, 16);
    return sizeof(*s);
}

static uint64_t nk_next(struct nk_ctx *c) { /* xorshift64*: transaction ids of indications */
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 2685821657736338717ULL;
}

static void nk_seed(struct nk_ctx *c, uint64_t seed) { c->rng = seed ? seed : 88172645463325252ULL; }

/* A plain Send indication: XOR-PEER-ADDRESS, DATA, optionally DONT-FRAGMENT, nothing else.
 * Fills the peer key (fd left 0, chan/kind left to the caller) and the data span. */
static int nk_parse_send(const uint8_t *d, uint32_t n, struct nk_key *peer, const uint8_t **data,
                         uint32_t *dlen) {
    if (n < 20 || d[0] != 0x00 || d[1] != 0x16)
        return 0;
    uint32_t length = (uint32_t)((d[2] << 8) | d[3]);
    if (20 + length != n || (length & 3))
        return 0;
    if (((uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7]) != NK_MAGIC)
        return 0;
    int have_peer = 0, have_data = 0;
    uint32_t pos = 20;
    memset(peer, 0, sizeof(*peer));
    while (pos + 4 <= n) {
        uint16_t type = (uint16_t)((d[pos] << 8) | d[pos + 1]);
        uint32_t alen = (uint32_t)((d[pos + 2] << 8) | d[pos + 3]);
        uint32_t start = pos + 4, padded = start + alen + ((4 - (alen & 3)) & 3);
        if (padded > n)
            return 0;
        const uint8_t *v = d + start;
        if (type == 0x0012 && !have_peer) {
            if (alen == 8 && v[1] == 0x01) {
                peer->family = 4;
                for (int i = 0; i < 4; i++)
                    peer->ip[i] = v[4 + i] ^ d[4 + i];
            } else if (alen == 20 && v[1] == 0x02) {
                peer->family = 6;
                for (int i = 0; i < 16; i++)
                    peer->ip[i] = v[4 + i] ^ d[4 + i];
            } else
                return 0;
            peer->port = (uint16_t)(((v[2] << 8) | v[3]) ^ 0x2112);
            have_peer = 1;
        } else if (type == 0x0013 && !have_data) {
            *data = v;
            *dlen = alen;
            have_data = 1;
        } else if (type == 0x001A && alen == 0) {
            /* DONT-FRAGMENT: the relay socket already carries the allocation's choice */
        } else
            return 0; /* anything else (FINGERPRINT, unknown, duplicates): Python decides */
        pos = padded;
    }
    return pos == n && have_peer && have_data;
}

/* ---------------------------------------------------------------- sending */

static int nk_same_dest(const struct nk_out *a, const struct nk_out *b) {
    return a->fd == b->fd && a->tolen == b->tolen && memcmp(&a->to, &b->to, a->tolen) == 0;
}

/* The next send queue entry (the queue has a place for every receive slot). */
static struct nk_out *nk_enqueue(struct nk_ctx *c, int fd, int to_client) {
    struct nk_out *o = &c->q[c->qn++];
    o->fd = fd;
    o->to_client = (uint8_t)to_client;
    o->hlen = 0;
    o->pad = 0;
    return o;
}

static const uint8_t nk_zeros[4];

#define NK_OWN_REPLY 2 /* nk_out.to_client: a reply of the control path, not relayed data */

static void nk_count(struct nk_ctx *c, const struct nk_group *g) {
    if (g->to_client == NK_OWN_REPLY)
        return;
    if (g->to_client) {
        c->p2c_packets += g->n;
        c->p2c_bytes += g->plen;
    } else {
        c->c2p_packets += g->n;
        c->c2p_bytes += g->plen;
    }
}

/* Send one group's datagrams one message each (no GSO): the fallback. */
static void nk_send_each(struct nk_ctx *c, const struct nk_group *g) {
    for (unsigned i = 0; i < g->n; i++) {
        const struct nk_out *o = &c->q[c->order[g->first + i]];
        struct iovec v[3];
        struct msghdr m;
        memset(&m, 0, sizeof(m));
        unsigned k = 0;
        if (o->hlen) {
            v[k].iov_base = (void *)o->hdr;
            v[k++].iov_len = o->hlen;
        }
        v[k].iov_base = (void *)o->data;
        v[k++].iov_len = o->dlen;
        if (o->pad) {
            v[k].iov_base = (void *)nk_zeros;
            v[k++].iov_len = o->pad;
        }
        m.msg_iov = v;
        m.msg_iovlen = k;
        m.msg_name = (void *)&o->to;
        m.msg_namelen = o->tolen;
        ssize_t r;
        do
            r = sendmsg(o->fd, &m, MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            c->send_errors++;
            continue;
        }
        if (o->to_client == NK_OWN_REPLY) {
            continue;
        } else if (o->to_client) {
            c->p2c_packets++;
            c->p2c_bytes += o->plen;
        } else {
            c->c2p_packets++;
            c->c2p_bytes += o->plen;
        }
    }
}

/*
 * Send everything queued. Datagrams to the same destination through the same socket with
 * the same size form groups (in arrival order: per-flow order is kept), each group leaves as
 * one UDP GSO message (the kernel splits it into the individual datagrams), and the groups of
 * one socket leave in one sendmmsg. Without GSO every datagram is its own message.
 */
static void nk_flush_all(struct nk_ctx *c) {
    unsigned n = c->qn, ng = 0;
    if (n == 0) {
        c->slot_next = 0;
        c->sbuf_used = 0;
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        struct nk_out *o = &c->q[i];
        uint32_t len = o->hlen + o->dlen + o->pad;
        unsigned j = ng, lo = ng > 16 ? ng - 16 : 0; /* a recent group of the same flow */
        if (c->gso) {
            for (unsigned t = ng; t > lo; t--) {
                struct nk_group *g = &c->groups[t - 1];
                if (g->seglen == len && g->n < NK_GSO_MAX && (g->n + 1) * len <= NK_GSO_BYTES &&
                    g->to_client == o->to_client && nk_same_dest(g->head, o)) {
                    j = t - 1;
                    break;
                }
            }
        }
        if (j == ng) {
            struct nk_group *g = &c->groups[ng++];
            g->fd = o->fd;
            g->n = 0;
            g->seglen = len;
            g->plen = 0;
            g->to_client = o->to_client;
            g->head = o;
        }
        c->gid[i] = j;
        c->groups[j].n++;
        c->groups[j].plen += o->plen;
    }
    unsigned pos = 0;
    for (unsigned j = 0; j < ng; j++) {
        c->groups[j].first = pos;
        pos += c->groups[j].n;
        c->groups[j].n = 0;
    }
    for (unsigned i = 0; i < n; i++) {
        struct nk_group *g = &c->groups[c->gid[i]];
        c->order[g->first + g->n++] = i;
    }
    /* groups of one socket next to each other (stable: per-flow order is kept) */
    for (unsigned j = 0; j < ng; j++) {
        unsigned k = j;
        while (k > 0 && c->groups[c->gorder[k - 1]].fd > c->groups[j].fd) {
            c->gorder[k] = c->gorder[k - 1];
            k--;
        }
        c->gorder[k] = j;
    }
    unsigned at = 0;
    while (at < ng) {
        int fd = c->groups[c->gorder[at]].fd;
        unsigned m = 0, iv = 0, end = at;
        for (; end < ng && c->groups[c->gorder[end]].fd == fd; end++) {
            struct nk_group *g = &c->groups[c->gorder[end]];
            struct msghdr *h = &c->omsgs[m].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_iov = &c->oiov[iv];
            for (unsigned s = 0; s < g->n; s++) {
                const struct nk_out *o = &c->q[c->order[g->first + s]];
                if (o->hlen) {
                    c->oiov[iv].iov_base = (void *)o->hdr;
                    c->oiov[iv++].iov_len = o->hlen;
                }
                c->oiov[iv].iov_base = (void *)o->data;
                c->oiov[iv++].iov_len = o->dlen;
                if (o->pad) {
                    c->oiov[iv].iov_base = (void *)nk_zeros;
                    c->oiov[iv++].iov_len = o->pad;
                }
            }
            h->msg_iovlen = (size_t)(&c->oiov[iv] - h->msg_iov);
            h->msg_name = (void *)&g->head->to;
            h->msg_namelen = g->head->tolen;
            if (g->n > 1) {
                h->msg_control = c->octl[m].b;
                h->msg_controllen = sizeof(c->octl[m].b);
                struct cmsghdr *cm = CMSG_FIRSTHDR(h);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t seg = (uint16_t)g->seglen;
                memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
            }
            m++;
        }
        unsigned done = 0;
        while (done < m) {
            int r = sendmmsg(fd, &c->omsgs[done], m - done, MSG_DONTWAIT);
            c->sendmmsg_calls++;
            if (r > 0) {
                for (unsigned i = done; i < done + (unsigned)r; i++) {
                    struct nk_group *g = &c->groups[c->gorder[at + i]];
                    nk_count(c, g);
                    if (g->n > 1)
                        c->gso_sends++;
                }
                done += (unsigned)r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            struct nk_group *g = &c->groups[c->gorder[at + done]];
            if (g->n > 1 && (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP ||
                             errno == ENOPROTOOPT || errno == EMSGSIZE)) {
                /* the device cannot segment, or a segment is over its MTU (EMSGSIZE; alone, the
                 * datagram may still be fragmented): datagrams one by one from now on */
                c->gso = 0;
                nk_send_each(c, g);
            } else {
                c->send_errors += g->n; /* a full buffer drops, as UDP would: send the rest */
            }
            done++;
        }
        at = end;
    }
    c->qn = 0;
    c->slot_next = 0;
    c->sbuf_used = 0;
}

/* ---------------------------------------------------------------- streams (TCP clients) */

/* The connection the C side owns on fd, or NULL (a UDP socket, or not handed over). */
static struct nk_conn *nk_stream(struct nk_ctx *c, int fd) {
    return fd >= 0 && fd < c->nfds ? c->conns[fd] : NULL;
}

static void nk_conn_events(struct nk_ctx *c, struct nk_conn *s) {
    uint32_t want = EPOLLIN | EPOLLRDHUP | (s->outlen ? EPOLLOUT : 0);
    if (s->dead || !s->started || want == s->events)
        return;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = want;
    ev.data.u64 = ((uint64_t)c->gens[s->fd] << 32) | (uint32_t)s->fd;
    if (epoll_ctl(c->epfd, s->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) == 0)
        s->events = want;
}

/* The stream is over: never read or written again; Python hears of it when `report`. */
static void nk_conn_dead(struct nk_ctx *c, struct nk_conn *s, int reason, int report) {
    if (s->dead)
        return;
    s->dead = 1;
    if (s->events) {
        struct epoll_event ev;
        (void)epoll_ctl(c->epfd, EPOLL_CTL_DEL, s->fd, &ev);
        s->events = 0;
    }
    c->gens[s->fd]++; /* events already read for it are stale */
    s->outlen = s->outoff = 0;
    if (!report)
        return;
    if (c->ngone + 2 > c->gonecap) {
        unsigned cap = c->gonecap ? 2 * c->gonecap : 64;
        int *g = realloc(c->gone, cap * sizeof(*g));
        if (g == NULL)
            return; /* Python finds out when it next writes to it */
        c->gone = g;
        c->gonecap = cap;
    }
    c->gone[c->ngone++] = s->fd;
    c->gone[c->ngone++] = reason;
}

/* Room for `need` more bytes to the client within `limit` queued; -1 when over it. */
static int nk_conn_reserve(struct nk_conn *s, uint32_t need, uint32_t limit) {
    if (s->outlen + need > limit)
        return -1;
    if (s->outoff + s->outlen + need <= s->outcap)
        return 0;
    if (s->outoff) {
        memmove(s->out, s->out + s->outoff, s->outlen);
        s->outoff = 0;
    }
    if (s->outlen + need > s->outcap) {
        uint32_t cap = s->outcap ? s->outcap : 16384;
        while (cap < s->outlen + need)
            cap *= 2;
        uint8_t *p = realloc(s->out, cap);
        if (p == NULL)
            return -1;
        s->out = p;
        s->outcap = cap;
    }
    return 0;
}

static void nk_dirty(struct nk_ctx *c, struct nk_conn *s) {
    if (s->dirty)
        return;
    if (c->ndirty == c->dirtycap) {
        unsigned cap = c->dirtycap ? 2 * c->dirtycap : 64;
        int *d = realloc(c->dirty, cap * sizeof(*d));
        if (d == NULL)
            return; /* written when epoll next reports it writable */
        c->dirty = d;
        c->dirtycap = cap;
    }
    c->dirty[c->ndirty++] = s->fd;
    s->dirty = 1;
}

/* Queue a relayed datagram for a stream client: header, data, padding. Over the limit it is
 * dropped, as a full UDP socket would: the peer cannot be slowed down, and media queued
 * behind a client that does not keep up only arrives later. */
static void nk_conn_put(struct nk_ctx *c, struct nk_conn *s, const uint8_t *hdr, uint32_t hlen,
                        const uint8_t *d, uint32_t n, uint32_t pad) {
    uint32_t need = hlen + n + pad;
    if (nk_conn_reserve(s, need, NK_SOUT_LIMIT) != 0) {
        c->stream_dropped++;
        c->send_errors++;
        return;
    }
    uint8_t *w = s->out + s->outoff + s->outlen;
    memcpy(w, hdr, hlen);
    memcpy(w + hlen, d, n);
    memset(w + hlen + n, 0, pad);
    s->outlen += need;
    c->held_bytes += need;
    c->p2c_packets++;
    c->p2c_bytes += n;
    nk_dirty(c, s);
}

/* One send of everything queued for the client (what the socket takes; the rest waits for
 * EPOLLOUT). */
static void nk_conn_write(struct nk_ctx *c, struct nk_conn *s) {
    while (s->outlen && !s->dead) {
        ssize_t r = send(s->fd, s->out + s->outoff, s->outlen, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r > 0) {
            c->stream_writes++;
            s->outoff += (uint32_t)r;
            s->outlen -= (uint32_t)r;
            break; /* a short write: the socket is full, EPOLLOUT says when it has room */
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        nk_conn_dead(c, s, NK_CLOSE_ERROR, 1);
        return;
    }
    if (s->outlen == 0) {
        s->outoff = 0;
        if (s->outcap > (256u << 10)) { /* a burst's buffer is not kept by an idle client */
            free(s->out);
            s->out = NULL;
            s->outcap = 0;
        }
    }
    nk_conn_events(c, s);
}

/* One write per stream client with bytes queued this turn. */
static void nk_streams_flush(struct nk_ctx *c) {
    c->held_bytes = 0;
    for (unsigned i = 0; i < c->ndirty; i++) {
        struct nk_conn *s = nk_stream(c, c->dirty[i]);
        if (s == NULL)
            continue;
        s->dirty = 0;
        nk_conn_write(c, s);
    }
    c->ndirty = 0;
}

/* ---------------------------------------------------------------- receiving */

/* Queue datagram d (n bytes) from peer `pk` (fd = the relay socket it arrived on) for the
 * client its entry names: ChannelData when a live channel covers the peer, else a Data
 * indication when a live permission covers its IP. 0 when no entry covers it. d has room for
 * padding after n bytes. */
static int nk_to_client(struct nk_ctx *c, const struct nk_key *pk, uint8_t *d, uint32_t n,
                        double now) {
    struct nk_slot *s = nk_find(c, pk);
    if (s != NULL && s->val.until > now && n <= 65535) {
        struct nk_conn *sc = nk_stream(c, s->val.fd);
        if (sc != NULL) { /* a TCP client: ChannelData padded to 4 bytes (RFC 8656 12.5) */
            if (!sc->started || sc->dead)
                return 0; /* Python still writes to it, or hears it is gone */
            uint8_t h[4] = {(uint8_t)(s->val.chan >> 8), (uint8_t)s->val.chan, (uint8_t)(n >> 8),
                            (uint8_t)n};
            nk_conn_put(c, sc, h, 4, d, n, (4 - (n & 3)) & 3);
            return 1;
        }
        struct nk_out *o = nk_enqueue(c, s->val.fd, 1);
        o->hdr[0] = (uint8_t)(s->val.chan >> 8);
        o->hdr[1] = (uint8_t)s->val.chan;
        o->hdr[2] = (uint8_t)(n >> 8);
        o->hdr[3] = (uint8_t)n;
        o->hlen = 4;
        o->data = d;
        o->dlen = n;
        o->plen = n;
        o->tolen = nk_sockaddr(&o->to, s->val.family, s->val.port, s->val.ip);
        return 1;
    }
    struct nk_key permk = *pk;
    permk.port = 0;
    permk.chan = NK_KIND_PERM;
    struct nk_slot *perm = nk_find(c, &permk);
    if (perm == NULL || !(perm->val.until > now) || n > 65535 - 48)
        return 0;
    /* a Data indication: XOR-PEER-ADDRESS and DATA */
    struct nk_conn *sc = nk_stream(c, perm->val.fd);
    if (sc != NULL && (!sc->started || sc->dead))
        return 0;
    struct nk_out stream_out;
    struct nk_out *o = sc != NULL ? &stream_out : nk_enqueue(c, perm->val.fd, 1);
    uint8_t *h = o->hdr;
    uint32_t alen = pk->family == 4 ? 8 : 20;
    uint32_t pad = (4 - (n & 3)) & 3;
    uint32_t body = 4 + alen + 4 + n + pad;
    uint64_t r1 = nk_next(c), r2 = nk_next(c);
    h[0] = 0x00;
    h[1] = 0x17;
    h[2] = (uint8_t)(body >> 8);
    h[3] = (uint8_t)body;
    h[4] = 0x21, h[5] = 0x12, h[6] = 0xA4, h[7] = 0x42;
    memcpy(h + 8, &r1, 8);
    memcpy(h + 16, &r2, 4);
    uint8_t *v = h + 20;
    v[0] = 0x00, v[1] = 0x12, v[2] = 0x00, v[3] = (uint8_t)alen;
    v[4] = 0x00;
    v[5] = pk->family == 4 ? 0x01 : 0x02;
    uint16_t xport = (uint16_t)(pk->port ^ 0x2112);
    v[6] = (uint8_t)(xport >> 8);
    v[7] = (uint8_t)xport;
    for (uint32_t j = 0; j < alen - 4; j++)
        v[8 + j] = pk->ip[j] ^ h[4 + j];
    uint8_t *dh = v + 4 + alen;
    dh[0] = 0x00, dh[1] = 0x13, dh[2] = (uint8_t)(n >> 8), dh[3] = (uint8_t)n;
    o->hlen = (uint8_t)(20 + 4 + alen + 4);
    if (sc != NULL) {
        nk_conn_put(c, sc, h, o->hlen, d, n, pad);
        return 1;
    }
    o->data = d;
    o->dlen = n;
    o->pad = (uint16_t)pad; /* not written after d: that may be the next GRO segment */
    o->plen = n;
    o->tolen = nk_sockaddr(&o->to, perm->val.family, perm->val.port, perm->val.ip);
    return 1;
}

/*
 * A ChannelData frame or Send indication d (n bytes: a UDP datagram, or a stream frame with its
 * padding) from the client `src` (fd, family, port, ip; chan 0): queued for its peer when an
 * entry covers it. 0 when none does (Python decides).
 */
static int nk_from_client(struct nk_ctx *c, const struct nk_key *src, const uint8_t *d,
                          uint32_t n, double now) {
    struct nk_key k;
    if (n >= 4 && d[0] >= 0x40 && d[0] <= 0x7F) {
        uint16_t chan = (uint16_t)((d[0] << 8) | d[1]);
        uint32_t len = (uint32_t)((d[2] << 8) | d[3]);
        k = *src;
        k.chan = chan;
        struct nk_slot *s = nk_find(c, &k);
        if (s == NULL || !(s->val.until > now) || 4 + len > n)
            return 0;
        if (s->val.chan == NK_INTERNAL) {
            /* the peer is a relay of this server: straight to its client, as if the datagram
             * had arrived there from our relay's address */
            struct nk_key pk;
            memset(&pk, 0, sizeof(pk));
            pk.fd = s->val.fd;
            pk.port = s->val.port;
            pk.family = s->val.family;
            memcpy(pk.ip, s->val.ip, 16);
            if (!nk_to_client(c, &pk, (uint8_t *)d + 4, len, now))
                return 0;
            c->internal_packets++;
            return 1;
        }
        struct nk_out *o = nk_enqueue(c, s->val.fd, 0);
        o->data = d + 4;
        o->dlen = len;
        o->plen = len;
        o->tolen = nk_sockaddr(&o->to, s->val.family, s->val.port, s->val.ip);
        return 1;
    }
    if (n < 20 || d[0] != 0x00 || d[1] != 0x16)
        return 0;
    struct nk_key peer;
    const uint8_t *data = NULL;
    uint32_t dlen = 0;
    if (!nk_parse_send(d, n, &peer, &data, &dlen))
        return 0;
    k = *src;
    k.chan = NK_KIND_ALLOC;
    struct nk_slot *a = nk_find(c, &k);
    int32_t relay_fd = -1;
    if (a != NULL) {
        if (peer.family == 4)
            relay_fd = a->val.fd;
        else
            memcpy(&relay_fd, a->val.ip, 4);
    }
    if (relay_fd < 0)
        return 0;
    struct nk_key pk = peer;
    pk.fd = relay_fd;
    pk.port = 0;
    pk.chan = NK_KIND_PERM;
    struct nk_slot *p = nk_find(c, &pk);
    if (p == NULL || !(p->val.until > now))
        return 0;
    struct nk_out *o = nk_enqueue(c, relay_fd, 0);
    o->data = data;
    o->dlen = dlen;
    o->plen = dlen;
    o->tolen = nk_sockaddr(&o->to, peer.family, peer.port, peer.ip);
    return 1;
}

static void nk_to_python(struct nk_ctx *c, int fd, int kind, const struct nk_key *from,
                         const uint8_t *d, uint32_t n, uint8_t *out, uint32_t outcap,
                         uint32_t *usedp);

/*
 * A listener's request the control path answers itself: its reply queued (1), or 0 (Python's).
 * An allocation it made gets its table entry here and a NK_REC_MADE record for Python (made
 * only when that record has room: Python must hear of every allocation).
 */
static int nk_ctl_answer(struct nk_ctx *c, int fd, const struct nk_key *src, const uint8_t *d,
                         uint32_t n, double now, uint8_t *out, uint32_t outcap, uint32_t *usedp) {
    if (c->ctl == NULL || n < 20 || d[0] > 0x01)
        return 0;
    struct nk_key ak = *src;
    ak.chan = NK_KIND_ALLOC;
    int has_alloc = *usedp + 2 * sizeof(struct nk_rec) + sizeof(struct nk_ctl_made) +
                            NK_CTL_REPLY > outcap ||
                    nk_find(c, &ak) != NULL;
    uint8_t *reply = c->ctlbuf + (size_t)c->qn * NK_CTL_REPLY;
    struct nk_ctl_made made;
    int len = nk_ctl_request(c->ctl, src->family, src->ip, src->port, d, n, now, has_alloc,
                             reply, &made);
    if (len < 0)
        return 1; /* dropped */
    if (len == 0)
        return 0;
    if (made.relay_fd >= 0) {
        struct nk_val v;
        memset(&v, 0, sizeof(v));
        v.fd = made.relay_fd;
        int32_t none = -1; /* no IPv6 relay */
        memcpy(v.ip, &none, 4);
        v.until = 1e300;
        if (nk_put(c, &ak, &v) != 0) { /* no memory: Send indications go to Python */
        }
        nk_to_python(c, fd, NK_REC_MADE, src, (const uint8_t *)&made,
                     NK_CTL_MADE_HEAD + made.user_len, out, outcap, usedp);
        nk_to_python(c, fd, NK_REC_MADE, src, reply, (uint32_t)len, out, outcap, usedp);
    }
    struct nk_out *o = nk_enqueue(c, fd, NK_OWN_REPLY);
    o->data = reply;
    o->dlen = (uint32_t)len;
    o->plen = 0;
    o->tolen = nk_sockaddr(&o->to, src->family, src->port, src->ip);
    return 1;
}

/* Hand a datagram or frame to Python: nk_rec + data at out + *usedp (dropped and counted when
 * out is full: Python is that far behind, as a full socket would). */
static void nk_to_python(struct nk_ctx *c, int fd, int kind, const struct nk_key *from,
                         const uint8_t *d, uint32_t n, uint8_t *out, uint32_t outcap,
                         uint32_t *usedp) {
    uint32_t used = *usedp;
    if (used + sizeof(struct nk_rec) + n > outcap) {
        c->py_dropped++;
        return;
    }
    struct nk_rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.len = n;
    rec.fd = fd;
    rec.kind = (uint8_t)kind;
    rec.family = from->family;
    rec.port = from->port;
    memcpy(rec.ip, from->ip, 16);
    memcpy(out + used, &rec, sizeof(rec));
    memcpy(out + used + sizeof(rec), d, n);
    *usedp = used + (uint32_t)sizeof(rec) + n;
    c->passed++;
}

/* The streams that ended since Python last heard: one NK_REC_CLOSED record each (kept for
 * the next turn when out has no room). */
static void nk_report_gone(struct nk_ctx *c, uint8_t *out, uint32_t outcap, uint32_t *usedp) {
    unsigned i = 0;
    for (; i + 1 < c->ngone; i += 2) {
        if (*usedp + sizeof(struct nk_rec) > outcap)
            break;
        struct nk_rec rec;
        memset(&rec, 0, sizeof(rec));
        rec.fd = c->gone[i];
        rec.kind = NK_REC_CLOSED;
        rec.port = (uint16_t)c->gone[i + 1];
        memcpy(out + *usedp, &rec, sizeof(rec));
        *usedp += (uint32_t)sizeof(rec);
    }
    memmove(c->gone, c->gone + i, (c->ngone - i) * sizeof(*c->gone));
    c->ngone -= i;
}

/*
 * Read what a stream client sent (a few reads at most: others wait their turn) and split it
 * into frames (RFC 8489 6.2.2, RFC 8656 12.5: ChannelData padded to 4 bytes): ChannelData and
 * Send indications an entry covers go to their peers, every other frame to Python in order.
 * A partial frame waits in the connection for the next read; bytes that start neither STUN
 * nor ChannelData on a channel up to channel_max end the stream (NK_CLOSE_FRAMING).
 */
static void nk_stream_read(struct nk_ctx *c, struct nk_conn *s, double now, uint8_t *out,
                           uint32_t outcap, uint32_t *usedp) {
    for (int round = 0; round < 4 && !s->dead; round++) {
        if (c->sbuf_used + NK_FRAME_MAX + NK_SREAD > NK_SBUF)
            nk_flush_all(c); /* queued datagrams point into sbuf: send them first */
        uint32_t at = c->sbuf_used;
        uint8_t *base = c->sbuf + at;
        if (s->inlen)
            memcpy(base, s->in, s->inlen);
        ssize_t r = recv(s->fd, base + s->inlen, NK_SREAD, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                nk_conn_dead(c, s, NK_CLOSE_ERROR, 1);
            return;
        }
        if (r == 0) {
            nk_conn_dead(c, s, NK_CLOSE_EOF, 1);
            return;
        }
        c->stream_reads++;
        uint32_t avail = s->inlen + (uint32_t)r, pos = 0;
        while (avail - pos >= 4) {
            const uint8_t *d = base + pos;
            uint32_t head = (uint32_t)((d[0] << 8) | d[1]), len = (uint32_t)((d[2] << 8) | d[3]);
            uint32_t need;
            if (head < 0x4000 && (len & 3) == 0)
                need = 20 + len;
            else if (head >= 0x4000 && head <= c->channel_max)
                need = 4 + len + ((4 - (len & 3)) & 3);
            else {
                nk_conn_dead(c, s, NK_CLOSE_FRAMING, 1);
                break;
            }
            if (avail - pos < need)
                break;
            if (c->qn >= NK_SLOTS)
                nk_flush_all(c);
            c->stream_frames++;
            if (!nk_from_client(c, &s->src, d, need, now))
                nk_to_python(c, s->fd, NK_KIND_STREAM, &s->src, d, need, out, outcap, usedp);
            pos += need;
        }
        c->sbuf_used = at + avail; /* what was queued from this read stays until the flush */
        if (s->dead)
            return;
        uint32_t left = avail - pos;
        if (left > s->incap) {
            uint32_t cap = left < 4096 ? 4096 : NK_FRAME_MAX;
            uint8_t *p = realloc(s->in, cap);
            if (p == NULL) {
                nk_conn_dead(c, s, NK_CLOSE_ERROR, 1);
                return;
            }
            s->in = p;
            s->incap = cap;
        }
        if (left)
            memcpy(s->in, base + pos, left);
        s->inlen = left;
        if (left == 0 && s->incap > 4096) {
            free(s->in);
            s->in = NULL;
            s->incap = 0;
        }
        if ((uint32_t)r < NK_SREAD)
            return; /* drained */
    }
}

/*
 * Drain up to `batch` datagrams from fd. kind 0: a client listener (ChannelData and Send
 * indications in), kind 1: a relay socket (peer datagrams in). Datagrams not forwarded are
 * appended to out at *usedp as nk_rec + data (or counted as dropped when out is full).
 * Returns the number received, or -1.
 */
static int nk_pump_one(struct nk_ctx *c, int fd, int kind, double now, unsigned batch,
                       uint8_t *out, uint32_t outcap, uint32_t *usedp) {
    if (c->slot_next + batch > NK_SLOTS || c->qn + batch > NK_SLOTS)
        nk_flush_all(c); /* the slots are all spoken for: send what is queued first */
    unsigned base = c->slot_next;
    for (unsigned i = 0; i < batch; i++) {
        c->iov[i].iov_base = c->bufs + (size_t)(base + i) * NK_SLOT;
        c->iov[i].iov_len = NK_SLOT;
        memset(&c->msgs[i].msg_hdr, 0, sizeof(c->msgs[i].msg_hdr));
        c->msgs[i].msg_hdr.msg_iov = &c->iov[i];
        c->msgs[i].msg_hdr.msg_iovlen = 1;
        c->msgs[i].msg_hdr.msg_name = &c->addrs[i];
        c->msgs[i].msg_hdr.msg_namelen = sizeof(c->addrs[i]);
        if (c->gro) {
            c->msgs[i].msg_hdr.msg_control = c->ictl[i].b;
            c->msgs[i].msg_hdr.msg_controllen = sizeof(c->ictl[i].b);
        }
    }
    int got = recvmmsg(fd, c->msgs, batch, MSG_DONTWAIT, NULL);
    if (got < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    int queued = 0;
    for (int i = 0; i < got; i++) {
        uint8_t *buf = c->iov[i].iov_base;
        uint32_t total = c->msgs[i].msg_len, seg = total;
        if (c->gro && c->msgs[i].msg_hdr.msg_controllen) {
            struct cmsghdr *cm = CMSG_FIRSTHDR(&c->msgs[i].msg_hdr);
            for (; cm != NULL; cm = CMSG_NXTHDR(&c->msgs[i].msg_hdr, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                    int size;
                    memcpy(&size, CMSG_DATA(cm), sizeof(size));
                    if (size > 0 && (uint32_t)size < total) {
                        seg = (uint32_t)size;
                        c->gro_reads++;
                    }
                }
        }
        struct nk_key src;
        nk_key_from(&src, fd, &c->addrs[i], 0);
        /* GRO: the kernel coalesced datagrams of one source into this read; each segment
         * (all seg bytes but the last) is a datagram of its own */
        uint32_t off = 0;
        int whole = seg == total;
        if (!whole && c->qn + (total + seg - 1) / seg > NK_SLOTS)
            nk_flush_all(c);
        for (int first = 1; first || off < total; first = 0, off += seg) { /* once if empty */
            if (c->qn >= NK_SLOTS) /* (segments of an earlier read of this batch filled it) */
                nk_flush_all(c);
            uint8_t *d = buf + off;
            uint32_t n = total - off < seg ? total - off : seg;
            if (kind == 0 ? nk_from_client(c, &src, d, n, now) : nk_to_client(c, &src, d, n, now)) {
                queued = 1;
                continue;
            }
            if (kind == 0 && nk_ctl_answer(c, fd, &src, d, n, now, out, outcap, usedp))
                continue; /* (the reply is in ctlbuf, not in the slots) */
            nk_to_python(c, fd, kind, &src, d, n, out, outcap, usedp); /* not ours */
        }
    }
    if (queued)
        c->slot_next = base + (unsigned)got; /* queued datagrams point into these slots */
    return got;
}

/* A ready socket of either kind: one batch of datagrams, or a stream's reads and writes.
 * Returns what nk_pump_one does (a stream: 0). */
static int nk_ready(struct nk_ctx *c, int fd, int kind, uint32_t events, double now,
                    unsigned batch, uint8_t *out, uint32_t outcap, uint32_t *usedp) {
    if (kind != NK_KIND_STREAM)
        return nk_pump_one(c, fd, kind, now, batch, out, outcap, usedp);
    struct nk_conn *s = nk_stream(c, fd);
    if (s == NULL || s->dead || !s->started)
        return 0;
    if (events & EPOLLOUT)
        nk_dirty(c, s);
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        nk_stream_read(c, s, now, out, outcap, usedp);
    return 0;
}

/* One socket, one batch (tests and single-socket use). Records at c->out. */
static int nk_pump(struct nk_ctx *c, int fd, int kind, double now, uint32_t *outlen) {
    *outlen = 0;
    int got = nk_pump_one(c, fd, kind, now, NK_BATCH, c->out, c->outcap, outlen);
    nk_flush_all(c);
    return got;
}

/* The kind of a watched socket from its epoll event, or -1 when the event is stale. */
static int nk_event_kind(struct nk_ctx *c, uint64_t data, int *fd) {
    *fd = (int)(uint32_t)data;
    uint32_t gen = (uint32_t)(data >> 32);
    if (*fd < 0 || *fd >= c->nfds || c->gens[*fd] != gen)
        return -1;
    return c->kinds[*fd];
}

/*
 * Every ready watched socket, one batch each. Records at c->out, *outlen bytes. Returns
 * 1 when more may be waiting (a full batch, or the output buffer ran short), 0 when all
 * were drained, -1 on error.
 */
static int nk_poll(struct nk_ctx *c, double now, uint32_t *outlen) {
    struct epoll_event events[64];
    uint32_t used = 0;
    int more = 0;
    *outlen = 0;
    int n = epoll_wait(c->epfd, events, 64, 0);
    if (n < 0)
        return errno == EINTR ? 1 : -1;
    if (n == 64)
        more = 1;
    for (int i = 0; i < n; i++) {
        uint32_t room = (c->outcap - used) / (NK_SLOT + (uint32_t)sizeof(struct nk_rec));
        if (room == 0) {
            more = 1;
            break;
        }
        int fd;
        int kind = nk_event_kind(c, events[i].data.u64, &fd);
        if (kind < 0)
            continue;
        unsigned batch = room < NK_BATCH ? room : NK_BATCH;
        int got = nk_ready(c, fd, kind, events[i].events, now, batch, c->out, c->outcap, &used);
        if (got == (int)batch)
            more = 1;
    }
    nk_flush_all(c);
    nk_streams_flush(c);
    nk_report_gone(c, c->out, c->outcap, &used);
    *outlen = used;
    return more;
}

/*
 * Send a batch the Python path made (replies to clients; over TLS, the datagrams a client's
 * read produced for its peers): records laid out as nk_out's (nk_rec + data, nk_rec.fd
 * ignored) all through socket fd, with sendmmsg; equal datagrams in a row to one destination
 * leave as one UDP GSO message. Returns how many could not be sent (a full buffer drops, as
 * UDP would). Uses only sendq/smsgs: safe beside the thread, serialised by the caller (one
 * Python call at a time).
 */
static int nk_send(struct nk_ctx *c, int fd, const uint8_t *buf, uint32_t len) {
    uint32_t pos = 0;
    int failed = 0;
    static __thread struct iovec iov[NK_SLOTS];
    static __thread unsigned segs[NK_SLOTS]; /* datagrams per message */
    static __thread union {
        char b[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[NK_SLOTS];
    while (pos < len) {
        unsigned n = 0, m = 0; /* records (one iovec each) and messages */
        struct nk_rec prev;
        while (pos + sizeof(struct nk_rec) <= len && n < NK_SLOTS) {
            struct nk_rec rec;
            memcpy(&rec, buf + pos, sizeof(rec));
            if (pos + sizeof(rec) + rec.len > len)
                return failed + 1; /* malformed: stop */
            iov[n].iov_base = (void *)(buf + pos + sizeof(rec));
            iov[n].iov_len = rec.len;
            /* equal datagrams to the previous one's destination join its GSO message */
            if (c->gso && m > 0 && segs[m - 1] < NK_GSO_MAX && rec.len > 0 && rec.len == prev.len &&
                (segs[m - 1] + 1) * rec.len <= NK_GSO_BYTES && rec.family == prev.family &&
                rec.port == prev.port && memcmp(rec.ip, prev.ip, 16) == 0) {
                segs[m - 1]++;
                c->smsgs[m - 1].msg_hdr.msg_iovlen++;
            } else {
                struct nk_out *o = &c->sendq[m];
                o->tolen = nk_sockaddr(&o->to, rec.family, rec.port, rec.ip);
                struct msghdr *h = &c->smsgs[m].msg_hdr;
                memset(h, 0, sizeof(*h));
                h->msg_iov = &iov[n];
                h->msg_iovlen = 1;
                h->msg_name = &o->to;
                h->msg_namelen = o->tolen;
                segs[m++] = 1;
            }
            prev = rec;
            pos += (uint32_t)sizeof(rec) + rec.len;
            n++;
        }
        if (n == 0)
            return failed + 1;
        for (unsigned j = 0; j < m; j++) {
            if (segs[j] < 2)
                continue;
            struct msghdr *h = &c->smsgs[j].msg_hdr;
            h->msg_control = ctl[j].b;
            h->msg_controllen = sizeof(ctl[j].b);
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)h->msg_iov[0].iov_len;
            memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
        }
        unsigned done = 0;
        while (done < m) {
            int r = sendmmsg(fd, &c->smsgs[done], m - done, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                struct msghdr *h = &c->smsgs[done].msg_hdr;
                if (segs[done] > 1 && r < 0 &&
                    (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOPROTOOPT ||
                     errno == EMSGSIZE)) {
                    /* the device cannot segment (or a segment exceeds its MTU): these datagrams
                     * one by one, and no GSO from now on */
                    c->gso = 0;
                    struct msghdr one = *h;
                    one.msg_control = NULL;
                    one.msg_controllen = 0;
                    one.msg_iovlen = 1;
                    for (unsigned k = 0; k < segs[done]; k++) {
                        one.msg_iov = h->msg_iov + k;
                        if (sendmsg(fd, &one, MSG_DONTWAIT) < 0)
                            failed++;
                    }
                } else {
                    failed += (int)segs[done]; /* a full buffer drops, as UDP would */
                }
                done++;
                continue;
            }
            done += (unsigned)r;
        }
    }
    return failed;
}

/* ---------------------------------------------------------------- streams: Python's side */

/* Take over fd (a dup of a TCP client socket; the table closes it on release): not read or
 * written yet, and datagrams for it still go to Python, until nk_stream_start. */
static int nk_stream_attach(struct nk_ctx *c, int fd, const struct nk_key *src) {
    if (nk_grow_fds(c, fd) != 0 || c->conns[fd] != NULL)
        return -1;
    struct nk_conn *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    s->fd = fd;
    s->src = *src;
    s->src.fd = fd;
    s->src.chan = 0;
    c->conns[fd] = s;
    c->kinds[fd] = NK_KIND_STREAM;
    c->gens[fd]++;
    return 0;
}

/* From now on the table reads and writes the stream; `pending` is what Python had read past
 * the last whole frame. */
static int nk_stream_start(struct nk_ctx *c, int fd, const uint8_t *pending, uint32_t n) {
    struct nk_conn *s = nk_stream(c, fd);
    if (s == NULL || s->started || n > NK_FRAME_MAX)
        return -1;
    if (n) {
        s->in = malloc(NK_FRAME_MAX);
        if (s->in == NULL)
            return -1;
        s->incap = NK_FRAME_MAX;
        memcpy(s->in, pending, n);
        s->inlen = n;
    }
    s->started = 1;
    nk_conn_events(c, s);
    if (s->events == 0)
        return -1;
    /* bytes already buffered by the kernel make epoll report it at once (level-triggered) */
    return 0;
}

/* Python's own message (a response) for the client: 0 queued and written as far as the socket
 * takes it, 1 the client has not read 2 MiB (the stream is cut: it is dead now), 2 the stream
 * is gone or not the table's. */
static int nk_stream_send(struct nk_ctx *c, int fd, const uint8_t *d, uint32_t n) {
    struct nk_conn *s = nk_stream(c, fd);
    if (s == NULL || !s->started || s->dead)
        return 2;
    if (nk_conn_reserve(s, n, NK_SOUT_HARD) != 0) {
        nk_conn_dead(c, s, NK_CLOSE_OVERFLOW, 0);
        return 1;
    }
    memcpy(s->out + s->outoff + s->outlen, d, n);
    s->outlen += n;
    nk_conn_write(c, s);
    return s->dead ? 2 : 0;
}

/* Forget the stream and close the table's fd. */
static void nk_stream_release(struct nk_ctx *c, int fd) {
    struct nk_conn *s = nk_stream(c, fd);
    if (s == NULL)
        return;
    nk_conn_dead(c, s, NK_CLOSE_EOF, 0);
    for (unsigned i = 0; i < c->ndirty; i++)
        if (c->dirty[i] == fd)
            c->dirty[i] = -1;
    for (unsigned i = 0; i + 1 < c->ngone; i += 2)
        if (c->gone[i] == fd)
            c->gone[i] = -1; /* reported as fd -1: Python skips it */
    c->conns[fd] = NULL;
    c->kinds[fd] = 0;
    close(s->fd);
    free(s->in);
    free(s->out);
    free(s);
}

/* ---------------------------------------------------------------- thread mode */

/*
 * The relay's own thread: epoll_wait on every watched socket, forward what the table covers,
 * queue the rest for Python (pyq) and signal notifyfd once until Python takes it. Everything
 * it touches is under c->mu, which Python's calls take too, so a table change lands between
 * two batches and an fd Python unwatched (and may close and reuse) is never read again: the
 * generation in each epoll event must match.
 */
static void *nk_thread_main(void *arg) {
    struct nk_ctx *c = arg;
    struct epoll_event events[64];
    int held = 0; /* turns the streams' output has waited for more input */
    for (;;) {
        /* With output for stream clients pending, look for more input first (without waiting):
         * what it brings leaves in the same write. The write is made as soon as a look finds
         * nothing, after NK_HOLD_TURNS turns, or once NK_HOLD_BYTES wait. */
        int n = epoll_wait(c->epfd, events, 64, c->ndirty ? 0 : 1000);
        pthread_mutex_lock(&c->mu);
        if (c->stopping) {
            pthread_mutex_unlock(&c->mu);
            break;
        }
        uint32_t before = c->pyq_len;
        double now = c->now;
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == NK_WAKE)
                continue;
            int fd;
            int kind = nk_event_kind(c, events[i].data.u64, &fd);
            if (kind < 0)
                continue;
            for (int round = 0; round < 4; round++) { /* fair: others wait their turn */
                int got = nk_ready(c, fd, kind, events[i].events, now, NK_BATCH, c->pyq, NK_PYQ,
                                   &c->pyq_len);
                if (got < (int)NK_BATCH)
                    break;
            }
        }
        nk_flush_all(c);
        if (c->ndirty && (n <= 0 || ++held >= NK_HOLD_TURNS || c->held_bytes >= NK_HOLD_BYTES)) {
            nk_streams_flush(c);
            held = 0;
        }
        nk_report_gone(c, c->pyq, NK_PYQ, &c->pyq_len);
        if (c->pyq_len > before && !c->notified) {
            uint64_t one = 1;
            if (write(c->notifyfd, &one, sizeof(one)) == sizeof(one))
                c->notified = 1;
        }
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

static int nk_start(struct nk_ctx *c) {
    if (c->running)
        return 0;
    if (c->pyq == NULL && (c->pyq = malloc(NK_PYQ)) == NULL)
        return -1;
    if (c->wakefd < 0)
        c->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->notifyfd < 0)
        c->notifyfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wakefd < 0 || c->notifyfd < 0)
        return -1;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = NK_WAKE;
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->wakefd, &ev) != 0 && errno != EEXIST)
        return -1;
    c->stopping = 0;
    c->pyq_len = 0;
    c->notified = 0;
    if (pthread_create(&c->thread, NULL, nk_thread_main, c) != 0)
        return -1;
    c->running = 1;
    return 0;
}

/* Stop and join the thread. Called without the lock. */
static void nk_stop(struct nk_ctx *c) {
    if (!c->running)
        return;
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_mutex_unlock(&c->mu);
    uint64_t one = 1;
    if (write(c->wakefd, &one, sizeof(one)) < 0) {
        /* the eventfd cannot be full here; the thread also wakes within a second */
    }
    pthread_join(c->thread, NULL);
    c->running = 0;
}

/* ---------------------------------------------------------------- the Python module */

typedef struct {
    PyObject_HEAD
    struct nk_ctx *ctx;
    int busy; /* a pump/poll/send call released the GIL: no other may run meanwhile */
} Table;

/* The context of an open table, or NULL + error. */
static struct nk_ctx *open_ctx(PyObject *obj) {
    Table *t = (Table *)obj;
    if (t->ctx == NULL)
        PyErr_SetString(PyExc_ValueError, "the table is closed");
    return t->ctx;
}

/* Take the context's lock with the GIL released while waiting (the thread holds the lock
 * for a batch and never takes the GIL, so waiting with the GIL held could only slow others). */
static void lock_ctx(struct nk_ctx *c) {
    if (pthread_mutex_trylock(&c->mu) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->mu);
    Py_END_ALLOW_THREADS
}

static void unlock_ctx(struct nk_ctx *c) { pthread_mutex_unlock(&c->mu); }

/* The context of an open table that no call without the GIL is using, or NULL + error.
 * Counters and the size may be read from another thread meanwhile (stats() of a server
 * running in a thread of its own): they are plain integers. */
static struct nk_ctx *table_ctx(PyObject *obj) {
    Table *t = (Table *)obj;
    if (open_ctx(obj) == NULL)
        return NULL;
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the table is in use by another thread");
        return NULL;
    }
    return t->ctx;
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"seed", NULL};
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|K", names, &seed))
        return NULL;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Table *self = (Table *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->busy = 0;
    int gso;
    Py_BEGIN_ALLOW_THREADS
    gso = nk_gso_probe();
    Py_END_ALLOW_THREADS
    self->ctx = nk_new(gso);
    if (self->ctx == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    nk_seed(self->ctx, seed);
    return (PyObject *)self;
}

static void Table_dealloc(PyObject *obj) {
    PyTypeObject *tp = Py_TYPE(obj);
    struct nk_ctx *c = ((Table *)obj)->ctx;
    if (c != NULL) {
        Py_BEGIN_ALLOW_THREADS
        nk_stop(c);
        Py_END_ALLOW_THREADS
    }
    nk_free(c);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(obj);
    Py_DECREF(tp);
}

static PyObject *Table_close(PyObject *obj, PyObject *unused) {
    Table *t = (Table *)obj;
    (void)unused;
    if (t->busy)
        return PyErr_Format(PyExc_RuntimeError, "the table is in use by another thread");
    struct nk_ctx *c = t->ctx;
    if (c != NULL) {
        Py_BEGIN_ALLOW_THREADS
        nk_stop(c);
        Py_END_ALLOW_THREADS
    }
    nk_free(c);
    t->ctx = NULL;
    Py_RETURN_NONE;
}

static PyObject *Table_put(PyObject *obj, PyObject *args) {
    const char *k, *v;
    Py_ssize_t klen, vlen;
    if (!PyArg_ParseTuple(args, "y#y#", &k, &klen, &v, &vlen))
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    if (klen != (Py_ssize_t)sizeof(struct nk_key) || vlen != (Py_ssize_t)sizeof(struct nk_val))
        return PyErr_Format(PyExc_ValueError, "key/value: %zu and %zu bytes", sizeof(struct nk_key),
                            sizeof(struct nk_val));
    struct nk_key key;
    struct nk_val val;
    memcpy(&key, k, sizeof key);
    memcpy(&val, v, sizeof val);
    lock_ctx(c);
    int failed = nk_put(c, &key, &val);
    unlock_ctx(c);
    if (failed != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Table_delete(PyObject *obj, PyObject *arg) {
    char *k;
    Py_ssize_t klen;
    if (PyBytes_AsStringAndSize(arg, &k, &klen) < 0)
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    if (klen != (Py_ssize_t)sizeof(struct nk_key))
        return PyErr_Format(PyExc_ValueError, "key: %zu bytes", sizeof(struct nk_key));
    struct nk_key key;
    memcpy(&key, k, sizeof key);
    lock_ctx(c);
    int was = nk_del(c, &key);
    unlock_ctx(c);
    return PyBool_FromLong(was);
}

static Py_ssize_t Table_len(PyObject *obj) {
    struct nk_ctx *c = open_ctx(obj);
    return c == NULL ? -1 : (Py_ssize_t)c->used;
}

static PyObject *Table_stats(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    uint64_t s[NK_NSTATS];
    nk_stats(c, s);
    PyObject *out = PyTuple_New(NK_NSTATS + 1);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < NK_NSTATS; i++)
        PyTuple_SetItem(out, i, PyLong_FromUnsignedLongLong(s[i]));
    PyTuple_SetItem(out, NK_NSTATS, PyBool_FromLong(c->gso));
    return out;
}

static PyObject *Table_epoll_fd(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = open_ctx(obj);
    return c == NULL ? NULL : PyLong_FromLong(c->epfd);
}

static PyObject *Table_watch(PyObject *obj, PyObject *args) {
    int fd, kind;
    if (!PyArg_ParseTuple(args, "ii", &fd, &kind))
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    lock_ctx(c);
    int failed = nk_watch(c, fd, kind);
    int err = errno;
    unlock_ctx(c);
    if (failed != 0) {
        errno = err ? err : ENOMEM;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Table_unwatch(PyObject *obj, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    lock_ctx(c);
    int failed = nk_unwatch(c, fd);
    unlock_ctx(c);
    return PyBool_FromLong(failed == 0);
}

/* pump() (one socket: fd, kind) or poll() (every ready one: all) without the GIL:
 * (count, the records left for Python). */
static PyObject *table_read(PyObject *obj, int all, int fd, int kind, double now) {
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    if (c->running)
        return PyErr_Format(PyExc_RuntimeError, "the table's thread is running: use take()");
    Table *t = (Table *)obj;
    uint32_t used = 0;
    int n;
    t->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->mu);
    n = all ? nk_poll(c, now, &used) : nk_pump(c, fd, kind, now, &used);
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    t->busy = 0;
    return Py_BuildValue("(iy#)", n, (const char *)c->out, (Py_ssize_t)used);
}

static PyObject *Table_pump(PyObject *obj, PyObject *args) {
    int fd, kind;
    double now;
    if (!PyArg_ParseTuple(args, "iid", &fd, &kind, &now))
        return NULL;
    return table_read(obj, 0, fd, kind, now);
}

static PyObject *Table_poll(PyObject *obj, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return table_read(obj, 1, -1, 0, now);
}

static PyObject *Table_send(PyObject *obj, PyObject *args) {
    int fd;
    Py_buffer batch;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &batch))
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL || batch.len > 0xFFFFFFFFu) {
        if (c != NULL)
            PyErr_SetString(PyExc_ValueError, "batch too large");
        PyBuffer_Release(&batch);
        return NULL;
    }
    Table *t = (Table *)obj;
    int failed;
    t->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    failed = nk_send(c, fd, batch.buf, (uint32_t)batch.len);
    Py_END_ALLOW_THREADS
    t->busy = 0;
    PyBuffer_Release(&batch);
    return PyLong_FromLong(failed);
}

static PyObject *Table_start(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    if (nk_start(c) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(c->notifyfd);
}

static PyObject *Table_stop(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    nk_stop(c);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Table_take(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    if (c->pyq == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    lock_ctx(c);
    PyObject *out = PyBytes_FromStringAndSize((const char *)c->pyq, (Py_ssize_t)c->pyq_len);
    if (out != NULL) {
        c->pyq_len = 0;
        uint64_t v;
        if (c->notified && read(c->notifyfd, &v, sizeof(v)) < 0) {
            /* already drained: nothing to do */
        }
        c->notified = 0;
    }
    unlock_ctx(c);
    return out;
}

static PyObject *Table_set_gro(PyObject *obj, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    lock_ctx(c);
    c->gro = on;
    unlock_ctx(c);
    Py_RETURN_NONE;
}

static PyObject *Table_set_now(PyObject *obj, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    lock_ctx(c);
    c->now = now;
    unlock_ctx(c);
    Py_RETURN_NONE;
}

/* ctl_configure(secret, lifetime, prefix, pre, post, budget_cap, own): see _turnctl.h. */
static PyObject *Table_ctl_configure(PyObject *obj, PyObject *args) {
    const char *secret, *prefix, *pre, *post, *own;
    Py_ssize_t secret_len, prefix_len, pre_len, post_len, own_len;
    double lifetime;
    unsigned int cap;
    if (!PyArg_ParseTuple(args, "y#dy#y#y#Iy#", &secret, &secret_len, &lifetime, &prefix,
                          &prefix_len, &pre, &pre_len, &post, &post_len, &cap, &own, &own_len))
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    struct nk_ctl *t = nk_ctl_new();
    uint8_t *buf = malloc((size_t)NK_SLOTS * NK_CTL_REPLY);
    if (t == NULL || buf == NULL) {
        nk_ctl_free(t);
        free(buf);
        return PyErr_NoMemory();
    }
    if (nk_ctl_configure(t, (const uint8_t *)secret, (size_t)secret_len, lifetime,
                         (const uint8_t *)prefix, (size_t)prefix_len, (const uint8_t *)pre,
                         (size_t)pre_len, (const uint8_t *)post, (size_t)post_len, cap,
                         (const uint8_t *)own, (size_t)own_len) != 0) {
        nk_ctl_free(t);
        free(buf);
        return PyErr_Format(PyExc_ValueError, "ctl_configure: a part is too long");
    }
    lock_ctx(c);
    struct nk_ctl *old = c->ctl;
    uint8_t *oldbuf = c->ctlbuf;
    nk_flush_all(c); /* nothing queued may point into the old buffer */
    c->ctl = t;
    c->ctlbuf = buf;
    unlock_ctx(c);
    nk_ctl_free(old);
    free(oldbuf);
    Py_RETURN_NONE;
}

/* ctl_credit(ips): one reply of budget per 17-byte record (family, ip[16]). */
static PyObject *Table_ctl_credit(PyObject *obj, PyObject *arg) {
    char *b;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &b, &n) < 0)
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    if (n % 17 != 0)
        return PyErr_Format(PyExc_ValueError, "ctl_credit: 17-byte records");
    lock_ctx(c);
    if (c->ctl != NULL)
        for (Py_ssize_t off = 0; off < n; off += 17)
            nk_ctl_credit(c->ctl, (uint8_t)b[off], (const uint8_t *)b + off + 1);
    unlock_ctx(c);
    Py_RETURN_NONE;
}

/* ctl_nonce(family, ip16, now) -> the nonce the control path issues (None: not configured). */
static PyObject *Table_ctl_nonce(PyObject *obj, PyObject *args) {
    int family;
    const char *ip;
    Py_ssize_t iplen;
    double now;
    if (!PyArg_ParseTuple(args, "iy#d", &family, &ip, &iplen, &now))
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    if (iplen != 16)
        return PyErr_Format(PyExc_ValueError, "ctl_nonce: a 16-byte ip");
    char text[64];
    int len = -1;
    lock_ctx(c);
    if (c->ctl != NULL)
        len = nk_ctl_nonce(c->ctl, (uint8_t)family, (const uint8_t *)ip, now, text);
    unlock_ctx(c);
    if (len < 0)
        Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize(text, len);
}

/* ctl_allocate_config(realm, users, default_lifetime, max_lifetime): see _turnctl.h. */
static PyObject *Table_ctl_allocate_config(PyObject *obj, PyObject *args) {
    const char *realm, *users;
    Py_ssize_t realm_len, users_len;
    unsigned int deflt, max;
    if (!PyArg_ParseTuple(args, "y#y#II", &realm, &realm_len, &users, &users_len, &deflt, &max))
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    int r = -1;
    lock_ctx(c);
    if (c->ctl != NULL)
        r = nk_ctl_allocate_config(c->ctl, (const uint8_t *)realm, (size_t)realm_len,
                                   (const uint8_t *)users, (size_t)users_len, deflt, max);
    unlock_ctx(c);
    if (r != 0)
        return PyErr_Format(PyExc_ValueError, "ctl_allocate_config: not configured or too long");
    Py_RETURN_NONE;
}

/* ctl_add_spares(records) -> spares held: records of fd (int), IPv4 (4), port (2, host order). */
static PyObject *Table_ctl_add_spares(PyObject *obj, PyObject *arg) {
    char *b;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &b, &n) < 0)
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    if (n % 10 != 0)
        return PyErr_Format(PyExc_ValueError, "ctl_add_spares: 10-byte records");
    long held = -1;
    int failed = 0;
    lock_ctx(c);
    if (c->ctl != NULL) {
        for (Py_ssize_t off = 0; off < n; off += 10) {
            int fd;
            uint16_t port;
            memcpy(&fd, b + off, 4);
            memcpy(&port, b + off + 8, 2);
            failed |= nk_ctl_add_spare(c->ctl, fd, (const uint8_t *)b + off + 4, port) != 0;
        }
        held = (long)nk_ctl_spares(c->ctl);
    }
    unlock_ctx(c);
    if (held < 0 || failed)
        return PyErr_Format(PyExc_ValueError, "ctl_add_spares: not configured or too many");
    return PyLong_FromLong(held);
}

/*
 * ctl_make_spares(records, rcvbuf) -> bytes: bind IPv4 relay sockets and hand them to the
 * thread as spares in one call (a socket, SO_RCVBUF, bind and the epoll add each, with the
 * GIL released and the thread's lock taken once). records: bind IPv4 (4), advertised IPv4
 * (4), port (2, host order; 0: the kernel's pick). Returns a record of fd (int32), port
 * (uint16, the bound one) and the input record's index (uint16) per socket made: a port
 * that would not bind (in use) is skipped, and making stops when the thread holds its most.
 */
static PyObject *Table_ctl_make_spares(PyObject *obj, PyObject *args) {
    const char *b;
    Py_ssize_t n;
    int rcvbuf;
    if (!PyArg_ParseTuple(args, "y#i", &b, &n, &rcvbuf))
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    if (n % 10 != 0 || n / 10 > 4096)
        return PyErr_Format(PyExc_ValueError, "ctl_make_spares: up to 4096 10-byte records");
    unsigned want = (unsigned)(n / 10), made = 0, kept = 0;
    int *fds = malloc(sizeof(int) * (want ? want : 1));
    uint16_t *ports = malloc(sizeof(uint16_t) * (want ? want : 1));
    uint16_t *idx = malloc(sizeof(uint16_t) * (want ? want : 1));
    if (fds == NULL || ports == NULL || idx == NULL) {
        free(fds), free(ports), free(idx);
        return PyErr_NoMemory();
    }
    ((Table *)obj)->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (unsigned i = 0; i < want; i++) {
        const uint8_t *r = (const uint8_t *)b + (size_t)i * 10;
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            break; /* out of descriptors: what was made is handed over */
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        struct sockaddr_in a;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        memcpy(&a.sin_addr, r, 4);
        uint16_t port;
        memcpy(&port, r + 8, 2);
        a.sin_port = htons(port);
        socklen_t alen = sizeof(a);
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
            (port == 0 && getsockname(fd, (struct sockaddr *)&a, &alen) != 0)) {
            close(fd);
            continue;
        }
        fds[made] = fd;
        ports[made] = ntohs(a.sin_port);
        idx[made++] = (uint16_t)i;
    }
    pthread_mutex_lock(&c->mu);
    for (; kept < made && c->ctl != NULL; kept++) {
        const uint8_t *r = (const uint8_t *)b + (size_t)idx[kept] * 10;
        if (nk_watch(c, fds[kept], 1) != 0)
            break;
        if (nk_ctl_add_spare(c->ctl, fds[kept], r + 4, ports[kept]) != 0) {
            nk_unwatch(c, fds[kept]);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    for (unsigned i = kept; i < made; i++)
        close(fds[i]);
    Py_END_ALLOW_THREADS
    ((Table *)obj)->busy = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)kept * 8);
    if (out != NULL) {
        char *w = PyBytes_AsString(out);
        for (unsigned i = 0; i < kept; i++) {
            int32_t fd = fds[i];
            memcpy(w + i * 8, &fd, 4);
            memcpy(w + i * 8 + 4, &ports[i], 2);
            memcpy(w + i * 8 + 6, &idx[i], 2);
        }
    }
    free(fds), free(ports), free(idx);
    return out;
}

/* ctl_take_spares() -> the fds of the spares still held (they leave the table's hands). */
static PyObject *Table_ctl_take_spares(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    int fds[1024];
    unsigned k = 0;
    lock_ctx(c);
    if (c->ctl != NULL)
        k = nk_ctl_take_spares(c->ctl, fds, 1024);
    unlock_ctx(c);
    PyObject *out = PyList_New(k);
    if (out == NULL)
        return NULL;
    for (unsigned i = 0; i < k; i++)
        PyList_SetItem(out, i, PyLong_FromLong(fds[i]));
    return out;
}

static PyObject *Table_ctl_stats(PyObject *obj, PyObject *unused) {
    (void)unused;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    uint64_t s[NK_CTL_NSTATS] = {0};
    lock_ctx(c);
    if (c->ctl != NULL)
        nk_ctl_stats(c->ctl, s);
    unlock_ctx(c);
    PyObject *out = PyTuple_New(NK_CTL_NSTATS);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < NK_CTL_NSTATS; i++)
        PyTuple_SetItem(out, i, PyLong_FromUnsignedLongLong(s[i]));
    return out;
}

/* The stream calls: (fd) or (fd, bytes), the context's lock held and the GIL released for the
 * call itself (stream_send writes to the socket). */
enum { NK_OP_ATTACH, NK_OP_START, NK_OP_SEND, NK_OP_RELEASE };

static PyObject *table_stream(PyObject *obj, PyObject *args, int op) {
    int fd;
    Py_buffer data = {0};
    if (!PyArg_ParseTuple(args, op == NK_OP_RELEASE ? "i" : "iy*", &fd, &data))
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    const char *bad = NULL;
    if (c != NULL && op == NK_OP_ATTACH && data.len != (Py_ssize_t)sizeof(struct nk_key))
        bad = "key: not KEY_SIZE bytes";
    else if (c != NULL && op == NK_OP_START && data.len > NK_FRAME_MAX)
        bad = "more pending than a frame";
    if (c == NULL || bad != NULL) {
        if (bad != NULL)
            PyErr_SetString(PyExc_ValueError, bad);
        if (op != NK_OP_RELEASE)
            PyBuffer_Release(&data);
        return NULL;
    }
    /* stream_send: more than the hard limit is refused before any copy */
    uint32_t n = data.len > NK_SOUT_HARD ? NK_SOUT_HARD + 1 : (uint32_t)data.len;
    int r = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->mu);
    if (op == NK_OP_ATTACH) {
        struct nk_key key;
        memcpy(&key, data.buf, sizeof key);
        r = nk_stream_attach(c, fd, &key);
    } else if (op == NK_OP_START)
        r = nk_stream_start(c, fd, data.buf, n);
    else if (op == NK_OP_SEND)
        r = nk_stream_send(c, fd, data.buf, n);
    else
        nk_stream_release(c, fd);
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    if (op != NK_OP_RELEASE)
        PyBuffer_Release(&data);
    if (op == NK_OP_SEND)
        return PyLong_FromLong(r);
    if (r != 0)
        return PyErr_Format(PyExc_ValueError,
                            op == NK_OP_ATTACH ? "fd %d: not attachable (in use, or no memory)"
                                               : "fd %d: not an attached stream",
                            fd);
    Py_RETURN_NONE;
}

#define NK_STREAM_METHOD(name, op)                                                                \
    static PyObject *Table_##name(PyObject *obj, PyObject *args) { return table_stream(obj, args, op); }
NK_STREAM_METHOD(stream_attach, NK_OP_ATTACH)
NK_STREAM_METHOD(stream_start, NK_OP_START)
NK_STREAM_METHOD(stream_send, NK_OP_SEND)
NK_STREAM_METHOD(stream_release, NK_OP_RELEASE)

static PyObject *Table_set_channel_max(PyObject *obj, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    struct nk_ctx *c = open_ctx(obj);
    if (c == NULL)
        return NULL;
    if (n < 0x4000 || n > 0x7FFF)
        return PyErr_Format(PyExc_ValueError, "channel_max: 0x4000-0x7FFF");
    lock_ctx(c);
    c->channel_max = (uint16_t)n;
    unlock_ctx(c);
    Py_RETURN_NONE;
}

static PyMethodDef Table_methods[] = {
    {"stream_attach", Table_stream_attach, METH_VARARGS,
     "stream_attach(fd, key): own fd (a dup of a TCP client socket; closed on release); its "
     "client is the key's address. Not read until stream_start."},
    {"stream_start", Table_stream_start, METH_VARARGS,
     "stream_start(fd, pending): read and write the stream from now on; pending: bytes read "
     "past the last whole frame."},
    {"stream_send", Table_stream_send, METH_VARARGS,
     "stream_send(fd, data) -> 0 queued, 1 the client reads too little (cut), 2 gone."},
    {"stream_release", Table_stream_release, METH_VARARGS, "stream_release(fd): forget and close it."},
    {"set_channel_max", Table_set_channel_max, METH_O,
     "set_channel_max(n): the highest channel number a stream may start a frame with."},
    {"start", Table_start, METH_NOARGS,
     "start() -> notify fd: run the relay's own thread (epoll loop, GIL never taken); the fd "
     "is readable when take() has datagrams."},
    {"stop", Table_stop, METH_NOARGS, "stop(): stop and join the thread."},
    {"take", Table_take, METH_NOARGS, "take() -> the records the thread left for Python."},
    {"set_now", Table_set_now, METH_O, "set_now(now): the engine's clock, for the thread."},
    {"ctl_configure", Table_ctl_configure, METH_VARARGS,
     "ctl_configure(secret, lifetime, prefix, pre, post, budget_cap, own): the C thread\n"
     "answers credential-less first requests with the engine's 401 (see _turnctl.h)."},
    {"ctl_credit", Table_ctl_credit, METH_O,
     "ctl_credit(records): sources whose requests verified (family + ip[16] each)."},
    {"ctl_nonce", Table_ctl_nonce, METH_VARARGS,
     "ctl_nonce(family, ip16, now) -> the nonce the C path issues, or None."},
    {"ctl_allocate_config", Table_ctl_allocate_config, METH_VARARGS,
     "ctl_allocate_config(realm, users, default_lifetime, max_lifetime): the C thread serves\n"
     "authenticated Allocates of these static users (records: name length, name, key)."},
    {"ctl_add_spares", Table_ctl_add_spares, METH_O,
     "ctl_add_spares(records) -> held: bound, watched IPv4 relay sockets (fd, ip, port)."},
    {"ctl_make_spares", Table_ctl_make_spares, METH_VARARGS,
     "ctl_make_spares(records, rcvbuf) -> (fd, port, index) records: spares bound here."},
    {"ctl_take_spares", Table_ctl_take_spares, METH_NOARGS,
     "ctl_take_spares() -> [fd]: the spares not used, given back."},
    {"ctl_stats", Table_ctl_stats, METH_NOARGS,
     "ctl_stats() -> (challenges, passed for want of budget, passed otherwise)."},
    {"set_gro", Table_set_gro, METH_O,
     "set_gro(on): sockets watched from now on ask for UDP GRO (coalesced reads)."},
    {"put", Table_put, METH_VARARGS, "put(key, value): add or replace an entry (32 + 40 bytes)."},
    {"delete", Table_delete, METH_O, "delete(key) -> whether it was there."},
    {"stats", Table_stats, METH_NOARGS,
     "(to_peer_packets, to_peer_bytes, to_client_packets, to_client_bytes, send_errors, passed, "
     "internal_packets, python_dropped, gso_sends, sendmmsg_calls, gro_reads, stream_reads, "
     "stream_writes, stream_dropped, stream_frames, gso)"},
    {"epoll_fd", Table_epoll_fd, METH_NOARGS, "The epoll fd watching every watched socket."},
    {"watch", Table_watch, METH_VARARGS, "watch(fd, kind): kind 0 client listener, 1 relay."},
    {"unwatch", Table_unwatch, METH_O, "unwatch(fd)"},
    {"pump", Table_pump, METH_VARARGS,
     "pump(fd, kind, now) -> (received, records for Python); GIL released."},
    {"poll", Table_poll, METH_O,
     "poll(now) -> (more may be waiting, records for Python); GIL released."},
    {"send", Table_send, METH_VARARGS,
     "send(fd, records) -> how many could not be sent; GIL released."},
    {"close", Table_close, METH_NOARGS, "Free the table and its epoll fd."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Table_slots[] = {
    {Py_tp_new, Table_new},
    {Py_tp_dealloc, Table_dealloc},
    {Py_tp_methods, Table_methods},
    {Py_sq_length, Table_len},
    {Py_tp_doc, "Table(seed=0): the channel/permission table, epoll set and buffers of a relay."},
    {0, NULL},
};

static PyType_Spec Table_spec = {
    "natkit.server._turnfast.Table", sizeof(Table), 0, Py_TPFLAGS_DEFAULT, Table_slots,
};

static int module_exec(PyObject *mod) {
    PyObject *type = PyType_FromSpec(&Table_spec);
    if (type == NULL)
        return -1;
    if (PyModule_AddObject(mod, "Table", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    if (PyModule_AddIntConstant(mod, "KEY_SIZE", (long)sizeof(struct nk_key)) < 0 ||
        PyModule_AddIntConstant(mod, "VALUE_SIZE", (long)sizeof(struct nk_val)) < 0 ||
        PyModule_AddIntConstant(mod, "RECORD_SIZE", (long)sizeof(struct nk_rec)) < 0 ||
        PyModule_AddIntConstant(mod, "BATCH", NK_BATCH) < 0 ||
        PyModule_AddIntConstant(mod, "INTERNAL", NK_INTERNAL) < 0 ||
        PyModule_AddIntConstant(mod, "KIND_STREAM", NK_KIND_STREAM) < 0 ||
        PyModule_AddIntConstant(mod, "REC_CLOSED", NK_REC_CLOSED) < 0 ||
        PyModule_AddIntConstant(mod, "STREAM_LIMIT", NK_SOUT_LIMIT) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "natkit.server._turnfast",
    "The TURN relay's ChannelData/Send data path (recvmmsg, GSO sendmmsg, its own epoll thread).", 0,
    NULL, module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__turnfast(void) { return PyModuleDef_Init(&module_def); }
