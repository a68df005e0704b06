/*
 * natkit.server._turnfast: the ChannelData fast path of natkit's TURN relay.
 *
 * A CPython extension module (limited API) built at install time by setup.py and wrapped by
 * natkit/server/_turn_fast.py; without it (not built, or NATKIT_NO_CEXT=1) the relay runs its
 * pure-Python data path. The calls that read or send (pump, poll, send) release the GIL.
 * Python stays the authority on every allocation, permission and channel; it mirrors each UDP
 * channel binding into the table here:
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
 * permissions; an entry past it is not used. The sockets are watched by an epoll instance
 * of the context (one fd for the event loop to watch); nk_poll() drains every ready socket
 * (nk_pump() one socket) with recvmmsg,
 * forwards every datagram an entry covers (ChannelData and plain Send indications from
 * clients to peers; peer datagrams to clients as ChannelData or Data indications) and copies
 * everything else (other STUN messages, anything unusual) into the caller's buffer for the
 * Python path, which has the last word. Nothing is allocated per packet.
 *
 * Sends are batched with sendmmsg in both directions: datagrams for the same socket queue up
 * (across the sockets one nk_poll drains: every relay socket's traffic to clients leaves
 * through the one listener) and go out when the socket changes, the queue is full, or the
 * poll ends. Queued datagrams point into the receive slots, so a slot is not received into
 * again until the queues holding it are flushed.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define NK_BATCH 32
#define NK_SLOTS (2 * NK_BATCH) /* receive slots: a batch being read + datagrams queued */
#define NK_SLOT 65536
#define NK_KIND_ALLOC 1
#define NK_KIND_PERM 2
#define NK_MAGIC 0x2112A442u

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

/* Datagrams queued for one socket: header (may be empty) + payload each. */
struct nk_queue {
    int fd;
    unsigned n;
    int to_client; /* which counters a sent datagram adds to */
    struct mmsghdr msgs[NK_SLOTS];
    struct iovec iov[NK_SLOTS][2];
    struct sockaddr_storage addrs[NK_SLOTS];
    uint32_t plen[NK_SLOTS];   /* relayed payload bytes */
    uint8_t hdr[NK_SLOTS][48]; /* ChannelData header, or Data indication up to DATA's value */
};

struct nk_ctx {
    struct nk_slot *slots;
    uint32_t cap, used, tomb;
    uint64_t c2p_packets, c2p_bytes, p2c_packets, p2c_bytes, send_errors, passed;
    uint8_t *bufs;
    unsigned slot_next; /* first receive slot no queued datagram points into */
    struct mmsghdr msgs[NK_BATCH];
    struct iovec iov[NK_BATCH];
    struct sockaddr_storage addrs[NK_BATCH];
    struct nk_queue to_peer, to_client;
    uint64_t rng;
    int epfd;
    uint8_t *out; /* datagrams for Python: nk_rec + data, ... */
    uint32_t outcap;
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

static struct nk_ctx *nk_new(void) {
    struct nk_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->bufs = malloc((size_t)NK_SLOTS * NK_SLOT); /* untouched pages cost no memory */
    c->to_peer.fd = c->to_client.fd = -1;
    c->to_client.to_client = 1;
    c->out = malloc(NK_OUTCAP); /* untouched pages cost no memory */
    c->outcap = NK_OUTCAP;
    c->cap = 1024;
    c->slots = calloc(c->cap, sizeof(*c->slots));
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c->bufs == NULL || c->slots == NULL || c->out == NULL || c->epfd < 0) {
        if (c->epfd >= 0)
            close(c->epfd);
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
    free(c->bufs);
    free(c->out);
    free(c->slots);
    free(c);
}

/* Watch a socket: kind 0 client listener, 1 relay. */
static int nk_watch(struct nk_ctx *c, int fd, int kind) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = ((uint64_t)(uint32_t)kind << 32) | (uint32_t)fd;
    return epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int nk_unwatch(struct nk_ctx *c, int fd) {
    struct epoll_event ev;
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

static void nk_stats(struct nk_ctx *c, uint64_t out[6]) {
    out[0] = c->c2p_packets;
    out[1] = c->c2p_bytes;
    out[2] = c->p2c_packets;
    out[3] = c->p2c_bytes;
    out[4] = c->send_errors;
    out[5] = c->passed;
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

static socklen_t nk_sockaddr(struct sockaddr_storage *out, const struct nk_val *v) {
    memset(out, 0, sizeof(*out));
    if (v->family == 4) {
        struct sockaddr_in *s = (struct sockaddr_in *)out;
        s->sin_family = AF_INET;
        s->sin_port = htons(v->port);
        memcpy(&s->sin_addr, v->ip, 4);
        return sizeof(*s);
    }
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)out;
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(v->port);
    memcpy(&s->sin6_addr, v->ip, 16);
    return sizeof(*s);
}

/* Point entry e of queue q at its iovecs and at the destination `to`. */
static void nk_msg(struct nk_queue *q, unsigned e, size_t iovlen, const struct nk_val *to) {
    struct msghdr *m = &q->msgs[e].msg_hdr;
    memset(m, 0, sizeof(*m));
    m->msg_iov = q->iov[e];
    m->msg_iovlen = iovlen;
    m->msg_name = &q->addrs[e];
    m->msg_namelen = nk_sockaddr(&q->addrs[e], to);
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

static void nk_flush(struct nk_ctx *c, struct nk_queue *q) {
    unsigned done = 0, n = q->n;
    while (done < n) {
        int r = sendmmsg(q->fd, &q->msgs[done], n - done, MSG_DONTWAIT);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            c->send_errors++; /* a full buffer drops, as UDP would: skip it, send the rest */
            done++;
            continue;
        }
        for (unsigned i = done; i < done + (unsigned)r; i++) {
            if (q->to_client) {
                c->p2c_packets++;
                c->p2c_bytes += q->plen[i];
            } else {
                c->c2p_packets++;
                c->c2p_bytes += q->plen[i];
            }
        }
        done += (unsigned)r;
    }
    q->n = 0;
}

static void nk_flush_all(struct nk_ctx *c) {
    if (c->to_peer.n)
        nk_flush(c, &c->to_peer);
    if (c->to_client.n)
        nk_flush(c, &c->to_client);
    c->slot_next = 0;
}

/* The next queue entry for fd: flushes what is queued for another socket first. */
static unsigned nk_enqueue(struct nk_ctx *c, struct nk_queue *q, int fd) {
    if (q->n && q->fd != fd)
        nk_flush(c, q);
    q->fd = fd;
    return q->n++;
}

/*
 * Drain up to `batch` datagrams from fd. kind 0: a client listener (ChannelData and Send
 * indications in), kind 1: a relay socket (peer datagrams in). Datagrams not forwarded are
 * appended to c->out at *used as nk_rec + data. Returns the number received, or -1.
 */
static int nk_pump_one(struct nk_ctx *c, int fd, int kind, double now, unsigned batch,
                       uint32_t *usedp) {
    uint8_t *out = c->out;
    uint32_t outcap = c->outcap;
    uint32_t used = *usedp;
    if (c->slot_next + batch > NK_SLOTS)
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
    }
    int got = recvmmsg(fd, c->msgs, batch, MSG_DONTWAIT, NULL);
    if (got < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    int queued = 0;
    for (int i = 0; i < got; i++) {
        uint8_t *d = c->iov[i].iov_base;
        uint32_t n = c->msgs[i].msg_len;
        struct nk_key k;
        if (kind == 0) {
            if (n >= 4 && d[0] >= 0x40 && d[0] <= 0x7F) {
                uint16_t chan = (uint16_t)((d[0] << 8) | d[1]);
                uint32_t len = (uint32_t)((d[2] << 8) | d[3]);
                nk_key_from(&k, fd, &c->addrs[i], chan);
                struct nk_slot *s = nk_find(c, &k);
                if (s != NULL && s->val.until > now && 4 + len <= n) {
                    struct nk_queue *q = &c->to_peer;
                    unsigned e = nk_enqueue(c, q, s->val.fd);
                    q->iov[e][0].iov_base = d + 4;
                    q->iov[e][0].iov_len = len;
                    q->plen[e] = len;
                    nk_msg(q, e, 1, &s->val);
                    queued = 1;
                    continue;
                }
            } else if (n >= 20 && d[0] == 0x00 && d[1] == 0x16) {
                struct nk_key peer;
                const uint8_t *data = NULL;
                uint32_t dlen = 0;
                if (nk_parse_send(d, n, &peer, &data, &dlen)) {
                    nk_key_from(&k, fd, &c->addrs[i], NK_KIND_ALLOC);
                    struct nk_slot *a = nk_find(c, &k);
                    int32_t relay_fd = -1;
                    if (a != NULL) {
                        if (peer.family == 4)
                            relay_fd = a->val.fd;
                        else
                            memcpy(&relay_fd, a->val.ip, 4);
                    }
                    if (relay_fd >= 0) {
                        struct nk_key pk = peer;
                        pk.fd = relay_fd;
                        pk.port = 0;
                        pk.chan = NK_KIND_PERM;
                        struct nk_slot *p = nk_find(c, &pk);
                        if (p != NULL && p->val.until > now) {
                            struct nk_val to;
                            memset(&to, 0, sizeof(to));
                            to.family = peer.family;
                            to.port = peer.port;
                            memcpy(to.ip, peer.ip, 16);
                            struct nk_queue *q = &c->to_peer;
                            unsigned e = nk_enqueue(c, q, relay_fd);
                            q->iov[e][0].iov_base = (void *)data;
                            q->iov[e][0].iov_len = dlen;
                            q->plen[e] = dlen;
                            nk_msg(q, e, 1, &to);
                            queued = 1;
                            continue;
                        }
                    }
                }
            }
        } else {
            nk_key_from(&k, fd, &c->addrs[i], 0);
            struct nk_slot *s = nk_find(c, &k);
            struct nk_slot *perm = NULL;
            if (s == NULL || !(s->val.until > now)) {
                struct nk_key pk = k;
                pk.port = 0;
                pk.chan = NK_KIND_PERM;
                perm = nk_find(c, &pk);
                if (perm != NULL && !(perm->val.until > now))
                    perm = NULL;
                s = NULL;
            }
            if (perm != NULL && n <= 65535 - 48) {
                /* a Data indication: XOR-PEER-ADDRESS and DATA */
                struct nk_queue *q = &c->to_client;
                unsigned e = nk_enqueue(c, q, perm->val.fd);
                uint8_t *h = q->hdr[e];
                uint32_t alen = k.family == 4 ? 8 : 20;
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
                v[5] = k.family == 4 ? 0x01 : 0x02;
                uint16_t xport = (uint16_t)(k.port ^ 0x2112);
                v[6] = (uint8_t)(xport >> 8);
                v[7] = (uint8_t)xport;
                for (uint32_t j = 0; j < alen - 4; j++)
                    v[8 + j] = k.ip[j] ^ h[4 + j];
                uint8_t *dh = v + 4 + alen;
                dh[0] = 0x00, dh[1] = 0x13, dh[2] = (uint8_t)(n >> 8), dh[3] = (uint8_t)n;
                uint32_t hlen = 20 + 4 + alen + 4;
                memset(d + n, 0, pad); /* the slot has room: n <= NK_SLOT - 48 */
                q->iov[e][0].iov_base = h;
                q->iov[e][0].iov_len = hlen;
                q->iov[e][1].iov_base = d;
                q->iov[e][1].iov_len = n + pad;
                q->plen[e] = n;
                nk_msg(q, e, 2, &perm->val);
                queued = 1;
                continue;
            }
            if (s != NULL && n <= 65535) {
                struct nk_queue *q = &c->to_client;
                unsigned e = nk_enqueue(c, q, s->val.fd);
                uint8_t *h = q->hdr[e];
                h[0] = (uint8_t)(s->val.chan >> 8);
                h[1] = (uint8_t)s->val.chan;
                h[2] = (uint8_t)(n >> 8);
                h[3] = (uint8_t)n;
                q->iov[e][0].iov_base = h;
                q->iov[e][0].iov_len = 4;
                q->iov[e][1].iov_base = d;
                q->iov[e][1].iov_len = n;
                q->plen[e] = n;
                nk_msg(q, e, 2, &s->val);
                queued = 1;
                continue;
            }
        }
        /* not ours: hand it to Python */
        if (used + sizeof(struct nk_rec) + n > outcap)
            continue; /* cannot happen with outcap >= NK_BATCH * (NK_SLOT + 24) */
        struct nk_rec rec;
        memset(&rec, 0, sizeof(rec));
        rec.len = n;
        rec.fd = fd;
        rec.kind = (uint8_t)kind;
        struct nk_key a;
        nk_key_from(&a, 0, &c->addrs[i], 0);
        rec.family = a.family;
        rec.port = a.port;
        memcpy(rec.ip, a.ip, 16);
        memcpy(out + used, &rec, sizeof(rec));
        memcpy(out + used + sizeof(rec), d, n);
        used += (uint32_t)sizeof(rec) + n;
        c->passed++;
    }
    if (queued)
        c->slot_next = base + (unsigned)got; /* queued datagrams point into these slots */
    *usedp = used;
    return got;
}

/* One socket, one batch (tests and single-socket use). Records at c->out. */
static int nk_pump(struct nk_ctx *c, int fd, int kind, double now, uint32_t *outlen) {
    *outlen = 0;
    int got = nk_pump_one(c, fd, kind, now, NK_BATCH, outlen);
    nk_flush_all(c);
    return got;
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
        unsigned batch = room < NK_BATCH ? room : NK_BATCH;
        int fd = (int)(uint32_t)events[i].data.u64;
        int kind = (int)(events[i].data.u64 >> 32);
        int got = nk_pump_one(c, fd, kind, now, batch, &used);
        if (got == (int)batch)
            more = 1;
    }
    nk_flush_all(c);
    *outlen = used;
    return more;
}

/*
 * Send a batch the Python path made (replies to clients): records laid out as nk_out's
 * (nk_rec + data, nk_rec.fd ignored) all through socket fd, with sendmmsg. Returns how many
 * could not be sent (a full buffer drops, as UDP would).
 */
static int nk_send(struct nk_ctx *c, int fd, const uint8_t *buf, uint32_t len) {
    struct nk_queue *q = &c->to_peer; /* free outside nk_poll/nk_pump: they flush before returning */
    uint32_t pos = 0;
    int failed = 0;
    while (pos < len) {
        unsigned n = 0;
        while (pos + sizeof(struct nk_rec) <= len && n < NK_SLOTS) {
            struct nk_rec rec;
            memcpy(&rec, buf + pos, sizeof(rec));
            if (pos + sizeof(rec) + rec.len > len)
                return failed + 1; /* malformed: stop */
            struct nk_val to;
            memset(&to, 0, sizeof(to));
            to.family = rec.family;
            to.port = rec.port;
            memcpy(to.ip, rec.ip, 16);
            q->iov[n][0].iov_base = (void *)(buf + pos + sizeof(rec));
            q->iov[n][0].iov_len = rec.len;
            nk_msg(q, n, 1, &to);
            pos += (uint32_t)sizeof(rec) + rec.len;
            n++;
        }
        if (n == 0)
            return failed + 1;
        unsigned done = 0;
        while (done < n) {
            int r = sendmmsg(fd, &q->msgs[done], n - done, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                failed++;
                done++;
                continue;
            }
            done += (unsigned)r;
        }
    }
    return failed;
}

/* ---------------------------------------------------------------- the Python module */

typedef struct {
    PyObject_HEAD
    struct nk_ctx *ctx;
    int busy; /* a call that released the GIL is running: no other call may touch ctx */
} Table;

/* The context of an open table, or NULL + error. */
static struct nk_ctx *open_ctx(PyObject *obj) {
    Table *t = (Table *)obj;
    if (t->ctx == NULL)
        PyErr_SetString(PyExc_ValueError, "the table is closed");
    return t->ctx;
}

/* The context of an open table that no call without the GIL is using (every call that
 * changes or reads through the table), or NULL + error. Counters and the size may be read
 * from another thread meanwhile (stats() of a server running in a thread of its own): they
 * are plain integers, read as the ctypes-loaded helper let them be read before. */
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
    self->ctx = nk_new();
    if (self->ctx == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    nk_seed(self->ctx, seed);
    return (PyObject *)self;
}

static void Table_dealloc(PyObject *obj) {
    PyTypeObject *tp = Py_TYPE(obj);
    nk_free(((Table *)obj)->ctx);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(obj);
    Py_DECREF(tp);
}

static PyObject *Table_close(PyObject *obj, PyObject *unused) {
    Table *t = (Table *)obj;
    (void)unused;
    if (t->busy)
        return PyErr_Format(PyExc_RuntimeError, "the table is in use by another thread");
    nk_free(t->ctx);
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
    if (nk_put(c, &key, &val) != 0)
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
    return PyBool_FromLong(nk_del(c, &key));
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
    uint64_t s[6];
    nk_stats(c, s);
    return Py_BuildValue("(KKKKKK)", (unsigned long long)s[0], (unsigned long long)s[1],
                         (unsigned long long)s[2], (unsigned long long)s[3],
                         (unsigned long long)s[4], (unsigned long long)s[5]);
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
    if (nk_watch(c, fd, kind) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Table_unwatch(PyObject *obj, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    return PyBool_FromLong(nk_unwatch(c, fd) == 0);
}

/* pump() (one socket: fd, kind) or poll() (every ready one: all) without the GIL:
 * (count, the records left for Python). */
static PyObject *table_read(PyObject *obj, int all, int fd, int kind, double now) {
    struct nk_ctx *c = table_ctx(obj);
    if (c == NULL)
        return NULL;
    Table *t = (Table *)obj;
    uint32_t used = 0;
    int n;
    t->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    n = all ? nk_poll(c, now, &used) : nk_pump(c, fd, kind, now, &used);
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

static PyMethodDef Table_methods[] = {
    {"put", Table_put, METH_VARARGS, "put(key, value): add or replace an entry (32 + 40 bytes)."},
    {"delete", Table_delete, METH_O, "delete(key) -> whether it was there."},
    {"stats", Table_stats, METH_NOARGS,
     "(to_peer_packets, to_peer_bytes, to_client_packets, to_client_bytes, send_errors, passed)"},
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
        PyModule_AddIntConstant(mod, "BATCH", NK_BATCH) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "natkit.server._turnfast",
    "The TURN relay's ChannelData/Send data path (recvmmsg/sendmmsg, epoll, GIL released).", 0,
    NULL, module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__turnfast(void) { return PyModuleDef_Init(&module_def); }
