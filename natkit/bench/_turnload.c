/*
 * natkit.bench._turnload: the load driver of `natkit bench turn`, in C so that it is not the
 * bottleneck when it measures a TURN server written in Python or C. A CPython extension
 * module (limited API) built at install time by setup.py; natkit/bench/turn.py runs it in its
 * own process pinned to a core (`python -m natkit.bench.loadgen turn ARGS`, which calls
 * main() below with the GIL released). The arguments:
 *
 *   turn MODE SERVER_IP SERVER_PORT USER KEYHEX [-n ALLOCS] [-s SECONDS] [-w WINDOW]
 *        [-b PAYLOAD_BYTES] [-l LIFETIME] [-c SETUP_WINDOW] [-t SETUP_TIMEOUT] [-p PEER_IP]
 *        [-a SOURCE_IP,SOURCE_IP...]
 *
 * KEYHEX is the long-term key MD5(user:realm:password) in hex (natkit computes it).
 * Every allocation is made the way a client does it: an unauthenticated Allocate, the 401
 * with REALM and NONCE, the authenticated Allocate (MESSAGE-INTEGRITY, HMAC-SHA1), on its own
 * UDP socket (its own 5-tuple). Then, by MODE:
 *
 *   channel  ChannelBind each allocation to a local peer socket, then keep WINDOW ChannelData
 *            messages in flight per allocation for SECONDS: client -> relay -> peer, the peer
 *            reflects each to the relay address it came from, relay -> client.
 *   send     the same with CreatePermission + Send indications out and Data indications back.
 *   alloc    allocate ALLOCS allocations as fast as the server takes them (SETUP_WINDOW
 *            handshakes in flight), print a line, wait for a line on stdin (the caller
 *            measures the server's memory meanwhile), then Refresh every allocation and count
 *            the ones the server still knows (state held).
 *
 * -a: the client sockets bind to these loopback IPs in turn (port picked by the kernel): one
 * source IP gives only the kernel's ephemeral ports (~28,000) of client sockets.
 *
 *   null     (turn null IP PORT [MAX_SECONDS]) not a driver but the least a relay can do,
 *            to measure the driver itself: see null_relay() below.
 *
 * The traffic is sent in batches: every burst of packets to one destination leaves in one
 * UDP GSO send (see gso_send()), and every socket is read with recvmmsg, so the driver pays
 * far less per packet than a relay that receives and sends each datagram: its own ceiling
 * (the null relay self-test) is well above what the servers it measures relay on one core.
 *
 * Output: `key=value` lines: "setup ...", then "result ...", then "released=N" (allocations
 * deleted with a zero-lifetime Refresh, so a next run starts clean). The driver's own CPU time
 * over the traffic phase is reported (driver_cpu, fraction of one core) so a run shows
 * whether the driver or the server was the limit.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- SHA-1 and HMAC-SHA1 (FIPS 180-4, RFC 2104) */

typedef struct {
    uint32_t h[5];
    uint64_t len;
    unsigned char buf[64];
    size_t used;
} sha1_ctx;

#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static void sha1_block(sha1_ctx *c, const unsigned char *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = c->h[0], b = c->h[1], d = c->h[3], e = c->h[4], cc = c->h[2];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & cc) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ cc ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & cc) | (b & d) | (cc & d); k = 0x8F1BBCDC; }
        else { f = b ^ cc ^ d; k = 0xCA62C1D6; }
        uint32_t t = ROL(a, 5) + f + e + k + w[i];
        e = d; d = cc; cc = ROL(b, 30); b = a; a = t;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e;
}

static void sha1_init(sha1_ctx *c) {
    static const uint32_t init[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    memcpy(c->h, init, sizeof init);
    c->len = 0;
    c->used = 0;
}

static void sha1_update(sha1_ctx *c, const unsigned char *p, size_t n) {
    c->len += n;
    while (n > 0) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->buf + c->used, p, take);
        c->used += take; p += take; n -= take;
        if (c->used == 64) { sha1_block(c, c->buf); c->used = 0; }
    }
}

static void sha1_final(sha1_ctx *c, unsigned char out[20]) {
    uint64_t bits = c->len * 8;
    unsigned char pad = 0x80, zero = 0, lenbuf[8];
    sha1_update(c, &pad, 1);
    while (c->used != 56) sha1_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_update(c, lenbuf, 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24); out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8); out[4 * i + 3] = (unsigned char)c->h[i];
    }
}

static void hmac_sha1(const unsigned char *key, size_t klen, const unsigned char *msg, size_t n,
                      unsigned char out[20]) {
    unsigned char k[64] = {0}, ipad[64], opad[64], inner[20];
    if (klen > 64) { sha1_ctx c; sha1_init(&c); sha1_update(&c, key, klen); sha1_final(&c, k); }
    else memcpy(k, key, klen);
    for (int i = 0; i < 64; i++) { ipad[i] = k[i] ^ 0x36; opad[i] = k[i] ^ 0x5c; }
    sha1_ctx c;
    sha1_init(&c); sha1_update(&c, ipad, 64); sha1_update(&c, msg, n); sha1_final(&c, inner);
    sha1_init(&c); sha1_update(&c, opad, 64); sha1_update(&c, inner, 20); sha1_final(&c, out);
}

/* ---------------------------------------------------------------- STUN/TURN messages (RFC 8489, RFC 8656) */

enum {
    ALLOCATE = 0x003, REFRESH = 0x004, SEND_IND = 0x016, DATA_IND = 0x017,
    CREATE_PERMISSION = 0x008, CHANNEL_BIND = 0x009,
    A_CHANNEL_NUMBER = 0x000C, A_LIFETIME = 0x000D, A_XOR_PEER = 0x0012, A_DATA = 0x0013,
    A_REALM = 0x0014, A_NONCE = 0x0015, A_XOR_RELAYED = 0x0016, A_REQ_TRANSPORT = 0x0019,
    A_USERNAME = 0x0006, A_MI = 0x0008, A_ERROR_CODE = 0x0009,
};
#define COOKIE 0x2112A442u
#define CHANNEL 0x4000

static const char *g_user;
static unsigned char g_key[16];
static char g_realm[256];
static int g_realm_len;

typedef struct { unsigned char b[1500]; int n; } msgbuf;

static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xffff); }
static unsigned get16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

static void m_start(msgbuf *m, unsigned type, const unsigned char tid[12]) {
    put16(m->b, type); put16(m->b + 2, 0); put32(m->b + 4, COOKIE);
    memcpy(m->b + 8, tid, 12);
    m->n = 20;
}

static void m_attr(msgbuf *m, unsigned type, const void *val, int len) {
    put16(m->b + m->n, type); put16(m->b + m->n + 2, (unsigned)len);
    memcpy(m->b + m->n + 4, val, (size_t)len);
    int padded = (len + 3) & ~3;
    memset(m->b + m->n + 4 + len, 0, (size_t)(padded - len));
    m->n += 4 + padded;
    put16(m->b + 2, (unsigned)(m->n - 20));
}

static void m_u32(msgbuf *m, unsigned type, uint32_t v) { unsigned char b[4]; put32(b, v); m_attr(m, type, b, 4); }

static void m_xor_addr(msgbuf *m, unsigned type, const struct sockaddr_in *sa) {
    unsigned char b[8] = {0, 1};
    put16(b + 2, ntohs(sa->sin_port) ^ (COOKIE >> 16));
    put32(b + 4, ntohl(sa->sin_addr.s_addr) ^ COOKIE);
    m_attr(m, type, b, 8);
}

/* USERNAME, REALM, NONCE and MESSAGE-INTEGRITY over everything before it. */
static void m_auth(msgbuf *m, const char *nonce, int nonce_len) {
    m_attr(m, A_USERNAME, g_user, (int)strlen(g_user));
    m_attr(m, A_REALM, g_realm, g_realm_len);
    m_attr(m, A_NONCE, nonce, nonce_len);
    put16(m->b + 2, (unsigned)(m->n - 20 + 24));
    unsigned char mac[20];
    hmac_sha1(g_key, 16, m->b, (size_t)m->n, mac);
    m_attr(m, A_MI, mac, 20);
}

/* Find an attribute in a STUN message; returns its value and sets *len, or NULL. */
static const unsigned char *find_attr(const unsigned char *p, int n, unsigned type, int *len) {
    int off = 20, end = 20 + (int)get16(p + 2);
    if (end > n) end = n;
    while (off + 4 <= end) {
        unsigned t = get16(p + off); int l = (int)get16(p + off + 2);
        if (off + 4 + l > end) return NULL;
        if (t == type) { *len = l; return p + off + 4; }
        off += 4 + ((l + 3) & ~3);
    }
    return NULL;
}

/* ---------------------------------------------------------------- clients */

enum { S_IDLE, S_ALLOC0, S_ALLOC1, S_PERM, S_READY, S_REFRESH, S_DONE, S_FAILED };

typedef struct {
    int fd, state, tries, inflight;
    unsigned char tid[12];
    double sent_at;
    char nonce[256];
    int nonce_len;
    int error;
} client;

static client *C;
static int N = 100, window_ = 32, payload = 100, lifetime = 3600, setup_window = 128;
static double seconds = 5, setup_timeout = 60;
static const char *peer_ip = "127.0.0.1"; /* -p: where the peer socket binds (loopback) */
#define NK_MAX_SOURCES 64
static struct in_addr g_sources[NK_MAX_SOURCES]; /* -a: client source IPs, used in turn */
static int g_nsources;
static char mode[16];
static struct sockaddr_in server, peer;
static int peer_fd, ep;
static long sent_pkts, client_rx, peer_rx, bad_rx;
static long reflect_lost, refills; /* the peer's echoes the kernel refused; silence refills */
static long late_rx, late_peer;     /* back after the 0.5 s drain (not in the rates, not lost) */
static long setup_retransmits, setup_challenges; /* the setup's timeouts, and 401/438s it got */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static void new_tid(client *c) { for (int k = 0; k < 12; k++) c->tid[k] = (unsigned char)rand(); }

/* Send the request for the client's current state (a new transaction id unless retransmitting). */
static void send_request(client *c, int fresh) {
    msgbuf m;
    if (fresh) { new_tid(c); c->tries = 0; }
    switch (c->state) {
    case S_ALLOC0:
        m_start(&m, ALLOCATE, c->tid); m_u32(&m, A_REQ_TRANSPORT, 17u << 24); break;
    case S_ALLOC1:
        m_start(&m, ALLOCATE, c->tid); m_u32(&m, A_REQ_TRANSPORT, 17u << 24);
        m_u32(&m, A_LIFETIME, (uint32_t)lifetime); m_auth(&m, c->nonce, c->nonce_len); break;
    case S_PERM:
        if (strcmp(mode, "channel") == 0) {
            m_start(&m, CHANNEL_BIND, c->tid); m_u32(&m, A_CHANNEL_NUMBER, (uint32_t)CHANNEL << 16);
        } else {
            m_start(&m, CREATE_PERMISSION, c->tid);
        }
        m_xor_addr(&m, A_XOR_PEER, &peer); m_auth(&m, c->nonce, c->nonce_len); break;
    case S_REFRESH:
        m_start(&m, REFRESH, c->tid); m_u32(&m, A_LIFETIME, (uint32_t)lifetime);
        m_auth(&m, c->nonce, c->nonce_len); break;
    default: return;
    }
    c->sent_at = now();
    c->tries++;
    send(c->fd, m.b, (size_t)m.n, 0);
}

/* Handle one response during setup/refresh; returns 1 when the client left the pending set. */
static int on_response(client *c, const unsigned char *p, int n) {
    if (n < 20 || memcmp(p + 8, c->tid, 12) != 0) return 0;
    unsigned type = get16(p), cls = ((type >> 7) & 2) | ((type >> 4) & 1);
    int len;
    const unsigned char *v;
    if (cls == 3) {
        v = find_attr(p, n, A_ERROR_CODE, &len);
        int code = v && len >= 4 ? (v[2] & 7) * 100 + v[3] : 0;
        const unsigned char *nv = find_attr(p, n, A_NONCE, &len);
        if (nv && len < (int)sizeof c->nonce && (code == 401 || code == 438) &&
            (c->state == S_ALLOC0 || code == 438) && c->tries < 6) {
            setup_challenges++;
            memcpy(c->nonce, nv, (size_t)len); c->nonce_len = len;
            const unsigned char *rv = find_attr(p, n, A_REALM, &len);
            if (rv && len < (int)sizeof g_realm && !g_realm_len) { memcpy(g_realm, rv, (size_t)len); g_realm_len = len; }
            if (c->state == S_ALLOC0) c->state = S_ALLOC1;
            send_request(c, 1);
            return 0;
        }
        c->error = code;
        c->state = S_FAILED;
        return 1;
    }
    if (cls != 2) return 0;
    if (c->state == S_ALLOC1) {
        if (strcmp(mode, "alloc") == 0) { c->state = S_READY; return 1; }
        c->state = S_PERM; send_request(c, 1); return 0;
    }
    if (c->state == S_PERM || c->state == S_REFRESH) { c->state = c->state == S_PERM ? S_READY : S_DONE; return 1; }
    return 0;
}

/* Run requests for clients [0, N) in state `from` until each leaves the pending set. */
static int run_transactions(int from, double timeout, int *ok) {
    int pending = 0, next = 0;
    double deadline = now() + timeout, last_scan = 0;
    struct epoll_event evs[256];
    unsigned char buf[2048];
    *ok = 0;
    while (now() < deadline) {
        while (pending < setup_window && next < N) {
            client *c = &C[next++];
            if (c->state != from) continue;
            pending++;
            if (from == S_DONE) { c->state = S_REFRESH; }
            send_request(c, 1);
        }
        if (pending == 0 && next >= N) break;
        int k = epoll_wait(ep, evs, 256, 20);
        for (int e = 0; e < k; e++) {
            if (evs[e].data.u32 == 0xffffffffu) {  /* the peer socket: late traffic, dropped */
                while (recv(peer_fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {}
                continue;
            }
            client *c = &C[evs[e].data.u32];
            for (;;) {
                ssize_t n = recv(c->fd, buf, sizeof buf, 0);
                if (n <= 0) break;
                if (c->state == S_READY || c->state == S_FAILED || c->state == S_DONE) continue;
                if (on_response(c, buf, (int)n)) { pending--; if (c->state != S_FAILED) (*ok)++; }
            }
        }
        double t = now();
        if (t - last_scan < 0.02) continue;
        last_scan = t;
        for (int i = 0; i < next; i++) {  /* retransmit (RFC 8489: doubling RTO, here from 250 ms) */
            client *c = &C[i];
            if (c->state != S_ALLOC0 && c->state != S_ALLOC1 && c->state != S_PERM && c->state != S_REFRESH) continue;
            if (t - c->sent_at > 0.25 * (1 << (c->tries - 1))) {
                if (c->tries >= 6) { c->state = S_FAILED; c->error = 408; pending--; }
                else { send_request(c, 0); setup_retransmits++; }
            }
        }
    }
    return pending;
}

/* Refresh every live allocation with `life` seconds (0 deletes it); returns how many succeeded. */
static int refresh_all(int life) {
    int ok = 0;
    lifetime = life;
    for (int i = 0; i < N; i++) if (C[i].state == S_READY || C[i].state == S_DONE) C[i].state = S_DONE;
    run_transactions(S_DONE, setup_timeout, &ok);
    return ok;
}

/* ---------------------------------------------------------------- batched UDP sends */

/*
 * On loopback the sender of a datagram pays for its whole trip through the stack (the
 * receive side runs in the sender's softirq), so a driver that sends one datagram per
 * packet costs as much per packet as the relay it measures and cannot outrun it. UDP GSO
 * (UDP_SEGMENT, Linux >= 4.18) sends up to GSO_MAX equal-sized datagrams to one destination
 * as one trip, split into the same individual datagrams just before the receiving socket's
 * queue: the server still receives and pays for every datagram one by one, the driver pays
 * for one trip per batch. Without GSO each segment is its own message (sendmmsg).
 */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
enum { GSO_MAX = 64, TX_MSGS = 1024 };
static int g_gso = 1;

/* One run of nseg equal datagrams (seglen bytes, `per` iovecs each, contiguous in iov). */
typedef struct {
    struct sockaddr_in to;
    int has_to, first_iov, nseg, per;
    size_t seglen;
} gso_run;

/* GSO is used only if a 2-segment send over loopback arrives as 2 datagrams. */
#include "../server/_gso_probe.h"
static void gso_probe(void) { g_gso = nk_gso_probe(); }

/* Send every run on fd, as few syscalls as possible; returns the datagrams sent. */
static long gso_send(int fd, gso_run *g, int ng, struct iovec *iov) {
    static struct mmsghdr mm[TX_MSGS];
    static int segs[TX_MSGS];
    static union { char b[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } ctl[TX_MSGS];
    long sent = 0;
    int m = 0;
    for (int j = 0; j < ng; j++) {
        for (int done = 0; done < g[j].nseg;) {
            int k = g_gso ? g[j].nseg - done : 1;
            if (k > GSO_MAX) k = GSO_MAX;
            if ((size_t)k * g[j].seglen > 65000) k = (int)(65000 / g[j].seglen);
            struct msghdr *h = &mm[m].msg_hdr;
            memset(h, 0, sizeof *h);
            h->msg_iov = iov + g[j].first_iov + done * g[j].per;
            h->msg_iovlen = (size_t)(k * g[j].per);
            if (g[j].has_to) { h->msg_name = &g[j].to; h->msg_namelen = sizeof g[j].to; }
            if (k > 1) {
                h->msg_control = ctl[m].b; h->msg_controllen = sizeof ctl[m].b;
                struct cmsghdr *cm = CMSG_FIRSTHDR(h);
                cm->cmsg_level = SOL_UDP; cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t sz = (uint16_t)g[j].seglen;
                memcpy(CMSG_DATA(cm), &sz, sizeof sz);
            }
            segs[m++] = k;
            done += k;
            if (m == TX_MSGS || (j == ng - 1 && done == g[j].nseg)) {
                for (int off = 0; off < m;) {
                    int s = sendmmsg(fd, mm + off, (unsigned)(m - off), 0);
                    if (s <= 0) {
                        if (s < 0 && errno == EINTR) continue;
                        m = 0; break;  /* buffer full: dropped, as a real client's would be */
                    }
                    for (int q = off; q < off + s; q++) sent += segs[q];
                    off += s;
                }
                m = 0;
            }
        }
    }
    return sent;
}

/* Received datagrams, read in batches with the headers set up once. */
enum { RX = 256 };
enum { SILENCE_MS = 200 }; /* no packet back for this long: the windows are taken as lost */
typedef struct {
    unsigned char buf[RX][1600];
    struct mmsghdr mm[RX];
    struct iovec io[RX];
    struct sockaddr_in from[RX];
} rx_batch;

static rx_batch *rx_new(void) {
    rx_batch *b = calloc(1, sizeof *b);
    for (int i = 0; i < RX; i++) {
        b->io[i].iov_base = b->buf[i]; b->io[i].iov_len = sizeof b->buf[i];
        b->mm[i].msg_hdr.msg_iov = &b->io[i]; b->mm[i].msg_hdr.msg_iovlen = 1;
        b->mm[i].msg_hdr.msg_name = &b->from[i];
    }
    return b;
}

static int rx_read(rx_batch *b, int fd, int max) {
    for (int i = 0; i < max; i++) b->mm[i].msg_hdr.msg_namelen = sizeof b->from[i];
    return recvmmsg(fd, b->mm, (unsigned)max, MSG_DONTWAIT, NULL);
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b) {
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* Put datagram i into the run for (to, seglen), creating it; returns the run index. */
static int run_of(gso_run *g, int *ng, const struct sockaddr_in *to, size_t seglen, int per) {
    for (int j = 0; j < *ng; j++)
        if (g[j].seglen == seglen && (!to || same_addr(&g[j].to, to))) { g[j].nseg++; return j; }
    gso_run *r = &g[(*ng)++];
    memset(r, 0, sizeof *r);
    if (to) { r->to = *to; r->has_to = 1; }
    r->seglen = seglen; r->per = per; r->nseg = 1;
    return (int)(r - g);
}

/* Lay the runs' iovecs out contiguously: first_iov per run, nseg reset to 0 to be refilled. */
static void runs_layout(gso_run *g, int ng) {
    int pos = 0;
    for (int j = 0; j < ng; j++) { g[j].first_iov = pos; pos += g[j].nseg * g[j].per; g[j].nseg = 0; }
}

/* ---------------------------------------------------------------- traffic */


/* Send indications differ only in their transaction id: a pool built once, sent in turn. */
enum { POOL = 1024 };
static unsigned char (*send_pool)[1500];
static int pkt_len, pool_next;
static unsigned char channel_pkt[1500];

static void build_packets(void) {
    if (strcmp(mode, "channel") == 0) {
        put16(channel_pkt, CHANNEL); put16(channel_pkt + 2, (unsigned)payload);
        memset(channel_pkt + 4, 0, (size_t)payload);
        pkt_len = 4 + payload;
        return;
    }
    send_pool = calloc(POOL, sizeof *send_pool);
    unsigned char data[1400] = {0};
    for (int i = 0; i < POOL; i++) {
        msgbuf m;
        unsigned char tid[12];
        for (int k = 0; k < 12; k++) tid[k] = (unsigned char)rand();
        m_start(&m, SEND_IND, tid);
        m_xor_addr(&m, A_XOR_PEER, &peer);
        put32(data, (uint32_t)i);
        m_attr(&m, A_DATA, data, payload);
        memcpy(send_pool[i], m.b, (size_t)m.n);
        pkt_len = m.n;
    }
}

static int is_relayed_back(const unsigned char *p, int n) {
    if (!send_pool) return n >= 4 && get16(p) == CHANNEL && (int)get16(p + 2) == payload;
    int len;
    return n >= 20 && get16(p) == DATA_IND && find_attr(p, n, A_DATA, &len) && len == payload;
}

/* Put `count` more packets in flight on the client's socket (connected to the server). */
static void fill(client *c, int count) {
    static struct iovec iov[TX_MSGS];
    if (count > TX_MSGS) count = TX_MSGS;
    for (int i = 0; i < count; i++) {
        iov[i].iov_len = (size_t)pkt_len;
        if (send_pool) { iov[i].iov_base = send_pool[pool_next]; pool_next = (pool_next + 1) % POOL; }
        else iov[i].iov_base = channel_pkt;
    }
    gso_run g = {.nseg = count, .per = 1, .seglen = (size_t)pkt_len};
    long s = gso_send(c->fd, &g, 1, iov);
    sent_pkts += s; c->inflight += (int)s;
}

/* The peer reflects each datagram to the relay address it came from: one send per batch. */
static void reflect(rx_batch *b, int r) {
    static gso_run g[RX];
    static struct iovec iov[RX];
    static int run_id[RX];
    int ng = 0;
    for (int i = 0; i < r; i++) run_id[i] = run_of(g, &ng, &b->from[i], b->mm[i].msg_len, 1);
    runs_layout(g, ng);
    for (int i = 0; i < r; i++) {
        gso_run *x = &g[run_id[i]];
        iov[x->first_iov + x->nseg].iov_base = b->buf[i];
        iov[x->first_iov + x->nseg].iov_len = b->mm[i].msg_len;
        x->nseg++;
    }
    reflect_lost += r - gso_send(peer_fd, g, ng, iov);
}

#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif
/* Datagrams the kernel dropped at this socket for want of receive buffer (SK_MEMINFO_DROPS). */
static long socket_drops(int fd) {
    uint32_t mem[9] = {0};
    socklen_t len = sizeof mem;
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0 || len < sizeof mem) return 0;
    return (long)mem[8];
}

static void traffic(void) {
    struct epoll_event evs[256];
    rx_batch *b = rx_new();
    build_packets();
    int ready = 0;
    for (int i = 0; i < N; i++) if (C[i].state == S_READY) { ready++; fill(&C[i], window_); }
    /* After SECONDS, 0.5 s for what is in flight to come back (counted in the rates); what
     * comes later, until everything is back or 3 s have passed, is late, not lost: a busy
     * machine can hold a process off its core for that long. */
    double t0 = now(), c0 = cpu_seconds(), end = t0 + seconds, late_from = end + 0.5;
    double give_up = end + 3.0;
    int sending = 1, quiet = 0;
    for (double t = now(); t < give_up; t = now()) {
        if (sending && t >= end) sending = 0;
        if (!sending && client_rx + late_rx >= sent_pkts) break;
        int late = t >= late_from;
        int k = epoll_wait(ep, evs, 256, 10);
        if (k == 0) quiet += 10; else quiet = 0;
        /* Silence: what is in flight is taken as lost and every window refilled. Only after
         * SILENCE_MS: a busy machine stalls a process for 10 ms often enough, and refilling
         * then put windows on top of windows still in flight (deeper queues everywhere, the
         * driver's own peer socket overflowing: loss that was the driver's). */
        if (quiet >= SILENCE_MS && sending) {
            refills++;
            quiet = 0;
            for (int i = 0; i < N; i++) if (C[i].state == S_READY) { C[i].inflight = 0; fill(&C[i], window_); }
            continue;
        }
        for (int e = 0; e < k; e++) {
            uint32_t id = evs[e].data.u32;
            int fd = id == 0xffffffffu ? peer_fd : C[id].fd;
            for (;;) {
                int r = rx_read(b, fd, RX);
                if (r <= 0) break;
                if (id == 0xffffffffu) {
                    if (late) late_peer += r; else peer_rx += r;
                    reflect(b, r);
                } else {
                    client *c = &C[id];
                    int good = 0;
                    for (int i = 0; i < r; i++) {
                        if (is_relayed_back(b->buf[i], (int)b->mm[i].msg_len)) good++; else bad_rx++;
                    }
                    if (late) late_rx += good; else client_rx += good;
                    c->inflight -= good;
                    if (c->inflight < 0) c->inflight = 0;
                    if (sending) fill(c, good);
                }
                if (r < RX) break;
            }
        }
    }
    double wall = now() - t0, cpu = cpu_seconds() - c0;
    /* what the driver itself lost: its sockets' receive drops and the echoes it could not send */
    long driver_drops = socket_drops(peer_fd) + reflect_lost;
    for (int i = 0; i < N; i++) driver_drops += socket_drops(C[i].fd);
    printf("result mode=%s allocations=%d sent=%ld peer_rx=%ld client_rx=%ld bad=%ld seconds=%.3f "
           "relayed_per_s=%.0f round_trips_per_s=%.0f loss=%.6f driver_cpu=%.3f driver_cpu_s=%.3f gso=%d "
           "driver_dropped=%ld refills=%ld late=%ld\n",
           mode, ready, sent_pkts, peer_rx, client_rx, bad_rx, seconds,
           (peer_rx + client_rx) / seconds, client_rx / seconds,
           sent_pkts ? 1.0 - (double)(client_rx + late_rx) / (double)sent_pkts : 0.0, cpu / wall,
           cpu, g_gso, driver_drops, refills, late_rx);
}

/* ---------------------------------------------------------------- the null relay (driver self-test) */

/*
 * `turnload null IP PORT`: the least a relay can do, to measure the driver rather than a
 * server. It answers Allocate (401 first, then success with a relay socket; credentials are
 * not checked), ChannelBind, CreatePermission and Refresh, and relays ChannelData and Send
 * indications to the peer and back, with batched reads and batched (GSO) sends, so that it
 * outruns the driver and the self-test shows the driver's own ceiling. Loopback only.
 */
typedef struct {
    struct sockaddr_in client, peer;
    int relay_fd, channel;
} nr_alloc;

static nr_alloc *NR;
static int nr_count, nr_listen;

static nr_alloc *nr_find(const struct sockaddr_in *a) {
    for (int i = 0; i < nr_count; i++)
        if (same_addr(&NR[i].client, a)) return &NR[i];
    return NULL;
}

static void nr_reply(msgbuf *m, const struct sockaddr_in *to) {
    sendto(nr_listen, m->b, (size_t)m->n, 0, (const struct sockaddr *)to, sizeof *to);
}

static void nr_peer_of(const unsigned char *p, int n, struct sockaddr_in *out) {
    int len;
    const unsigned char *v = find_attr(p, n, A_XOR_PEER, &len);
    if (!v || len < 8) return;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)(get16(v + 2) ^ (COOKIE >> 16)));
    uint32_t ip = ((uint32_t)v[4] << 24 | (uint32_t)v[5] << 16 | (uint32_t)v[6] << 8 | v[7]) ^ COOKIE;
    out->sin_addr.s_addr = htonl(ip);
}

static void nr_request(const unsigned char *p, int n, const struct sockaddr_in *from) {
    unsigned type = get16(p), method = type & 0x3EEF;
    msgbuf m;
    int len;
    nr_alloc *a = nr_find(from);
    if ((type & 0x0110) != 0) return; /* only requests */
    if (method == ALLOCATE && !find_attr(p, n, A_USERNAME, &len)) {
        m_start(&m, 0x0113, p + 8);
        unsigned char code[4] = {0, 0, 4, 1};
        m_attr(&m, A_ERROR_CODE, code, 4);
        m_attr(&m, A_REALM, "null", 4);
        m_attr(&m, A_NONCE, "nonce", 5);
        nr_reply(&m, from);
        return;
    }
    if (method == ALLOCATE) {
        if (!a) {
            a = &NR[nr_count++];
            memset(a, 0, sizeof *a);
            a->client = *from;
            a->relay_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
            struct sockaddr_in r = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            bind(a->relay_fd, (struct sockaddr *)&r, sizeof r);
            int big = 4 << 20;
            setsockopt(a->relay_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
            setsockopt(a->relay_fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(a - NR)};
            epoll_ctl(ep, EPOLL_CTL_ADD, a->relay_fd, &ev);
        }
        struct sockaddr_in r;
        socklen_t rl = sizeof r;
        getsockname(a->relay_fd, (struct sockaddr *)&r, &rl);
        m_start(&m, 0x0103, p + 8);
        m_xor_addr(&m, A_XOR_RELAYED, &r);
        m_u32(&m, A_LIFETIME, 600);
    } else {
        if (!a && method != 1) return; /* Binding is answered too: that is how callers see it is up */
        if (method == CHANNEL_BIND) {
            const unsigned char *v = find_attr(p, n, A_CHANNEL_NUMBER, &len);
            if (v) a->channel = (int)get16(v);
        }
        if (method == CHANNEL_BIND || method == CREATE_PERMISSION) nr_peer_of(p, n, &a->peer);
        m_start(&m, 0x0100 | method, p + 8);
    }
    nr_reply(&m, from);
}

/* Datagrams from clients: ChannelData and Send indications to the peer, one send per allocation. */
static void nr_from_clients(rx_batch *b, int r) {
    static gso_run g[RX];
    static struct iovec iov[RX];
    static int run_id[RX];
    static nr_alloc *owner[RX];
    static struct sockaddr_in to[RX];
    static const unsigned char *data[RX];
    static int dlen[RX];
    int ng = 0;
    for (int i = 0; i < r; i++) {
        unsigned char *p = b->buf[i];
        int n = (int)b->mm[i].msg_len, len = 0;
        nr_alloc *a;
        run_id[i] = -1;
        if (n >= 4 && (p[0] & 0xC0) == 0x40) { /* ChannelData */
            a = nr_find(&b->from[i]);
            if (!a || !a->peer.sin_port || (int)get16(p + 2) > n - 4) continue;
            to[i] = a->peer; data[i] = p + 4; dlen[i] = (int)get16(p + 2);
        } else if (n >= 20 && get16(p) == SEND_IND) {
            a = nr_find(&b->from[i]);
            const unsigned char *d = find_attr(p, n, A_DATA, &len);
            memset(&to[i], 0, sizeof to[i]);
            nr_peer_of(p, n, &to[i]);
            if (!a || !d || !to[i].sin_port) continue;
            data[i] = d; dlen[i] = len;
        } else {
            if (n >= 20 && nr_count < 4096) nr_request(p, n, &b->from[i]);
            continue;
        }
        /* a run per (allocation, destination, length): the key includes the allocation */
        int j;
        for (j = 0; j < ng; j++)
            if (owner[j] == a && g[j].seglen == (size_t)dlen[i] && same_addr(&g[j].to, &to[i])) break;
        if (j == ng) {
            memset(&g[ng], 0, sizeof g[ng]);
            g[ng].to = to[i]; g[ng].has_to = 1; g[ng].seglen = (size_t)dlen[i]; g[ng].per = 1;
            owner[ng++] = a;
        }
        g[j].nseg++;
        run_id[i] = j;
    }
    runs_layout(g, ng);
    for (int i = 0; i < r; i++) {
        if (run_id[i] < 0) continue;
        gso_run *x = &g[run_id[i]];
        iov[x->first_iov + x->nseg].iov_base = (void *)data[i];
        iov[x->first_iov + x->nseg].iov_len = (size_t)dlen[i];
        x->nseg++;
    }
    for (int j = 0; j < ng; j++) gso_send(owner[j]->relay_fd, &g[j], 1, iov);
}

/* Datagrams from the peer on one relay socket: back to the client, one send per batch. */
static void nr_from_peer(nr_alloc *a, rx_batch *b, int r) {
    static unsigned char hdr[RX][40];
    static const unsigned char zero[4];
    static struct iovec iov[3 * RX];
    static gso_run g[RX];
    int ng = 0, per = a->channel ? 2 : 3;
    for (int i = 0; i < r; i++) {  /* one run per length (all the same in practice) */
        int n = (int)b->mm[i].msg_len, pad = a->channel ? 0 : (4 - (n & 3)) & 3;
        int h = a->channel ? 4 : 36;
        run_of(g, &ng, NULL, (size_t)(h + n + pad), per);
    }
    for (int j = 0; j < ng; j++) { g[j].to = a->client; g[j].has_to = 1; }
    runs_layout(g, ng);
    for (int i = 0; i < r; i++) {
        int n = (int)b->mm[i].msg_len, pad = a->channel ? 0 : (4 - (n & 3)) & 3;
        int h;
        if (a->channel) {
            put16(hdr[i], (unsigned)a->channel); put16(hdr[i] + 2, (unsigned)n);
            h = 4;
        } else {  /* Data indication: header, XOR-PEER-ADDRESS, DATA attribute header */
            msgbuf m;
            unsigned char tid[12] = {0};
            m_start(&m, DATA_IND, tid);
            m_xor_addr(&m, A_XOR_PEER, &b->from[i]);
            put16(m.b + m.n, A_DATA); put16(m.b + m.n + 2, (unsigned)n);
            put16(m.b + 2, (unsigned)(m.n + 4 + n + pad - 20));
            memcpy(hdr[i], m.b, (size_t)m.n + 4);
            h = m.n + 4;
        }
        int j;
        for (j = 0; j < ng; j++) if (g[j].seglen == (size_t)(h + n + pad)) break;
        struct iovec *v = &iov[g[j].first_iov + g[j].nseg * per];
        v[0].iov_base = hdr[i]; v[0].iov_len = (size_t)h;
        v[1].iov_base = b->buf[i]; v[1].iov_len = (size_t)n;
        if (per == 3) { v[2].iov_base = (void *)zero; v[2].iov_len = (size_t)pad; }
        g[j].nseg++;
    }
    gso_send(nr_listen, g, ng, iov);
}

static int null_relay(const char *ip, int port, double max_seconds) {
    gso_probe();
    nr_listen = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &la.sin_addr) != 1 || bind(nr_listen, (struct sockaddr *)&la, sizeof la) != 0) {
        perror("turnload null: bind");
        return 2;
    }
    int big = 8 << 20;
    setsockopt(nr_listen, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(nr_listen, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    NR = calloc(4096, sizeof *NR);
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, nr_listen, &lev);
    rx_batch *b = rx_new();
    struct epoll_event evs[64];
    double end = now() + max_seconds;
    while (now() < end) {
        int k = epoll_wait(ep, evs, 64, 100);
        for (int e = 0; e < k; e++) {
            uint32_t id = evs[e].data.u32;
            int fd = id == 0xffffffffu ? nr_listen : NR[id].relay_fd;
            for (;;) {
                int r = rx_read(b, fd, RX);
                if (r <= 0) break;
                if (id == 0xffffffffu) nr_from_clients(b, r);
                else nr_from_peer(&NR[id], b, r);
                if (r < RX) break;
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- main */

static int hexval(int ch) { return ch <= '9' ? ch - '0' : (ch | 32) - 'a' + 10; }

static int turnload_main(int argc, char **argv) {
    if (argc < 6 && !(argc >= 4 && strcmp(argv[1], "null") == 0)) {
        fprintf(stderr, "usage: %s channel|send|alloc SERVER_IP PORT USER KEYHEX [-n N] [-s S] [-w W] "
                        "[-b BYTES] [-l LIFETIME] [-c SETUP_WINDOW] [-t SETUP_TIMEOUT] [-p PEER_IP]\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "null") == 0 && argc >= 4)  /* turnload null IP PORT [MAX_SECONDS] */
        return null_relay(argv[2], atoi(argv[3]), argc > 4 ? atof(argv[4]) : 600);
    snprintf(mode, sizeof mode, "%s", argv[1]);
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &server.sin_addr) != 1) { fprintf(stderr, "turnload: bad IPv4 %s\n", argv[2]); return 2; }
    g_user = argv[4];
    if (strlen(argv[5]) != 32) { fprintf(stderr, "turnload: KEYHEX must be 32 hex digits\n"); return 2; }
    for (int i = 0; i < 16; i++) g_key[i] = (unsigned char)(hexval(argv[5][2 * i]) << 4 | hexval(argv[5][2 * i + 1]));
    for (int i = 6; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "-n")) N = atoi(v);
        else if (!strcmp(o, "-s")) seconds = atof(v);
        else if (!strcmp(o, "-w")) window_ = atoi(v);
        else if (!strcmp(o, "-b")) payload = atoi(v);
        else if (!strcmp(o, "-l")) lifetime = atoi(v);
        else if (!strcmp(o, "-c")) setup_window = atoi(v);
        else if (!strcmp(o, "-t")) setup_timeout = atof(v);
        else if (!strcmp(o, "-p")) peer_ip = v;
        else if (!strcmp(o, "-a")) {
            char list[1024];
            snprintf(list, sizeof list, "%s", v);
            for (char *save = NULL, *ip = strtok_r(list, ",", &save); ip != NULL; ip = strtok_r(NULL, ",", &save)) {
                if (g_nsources == NK_MAX_SOURCES || inet_pton(AF_INET, ip, &g_sources[g_nsources]) != 1) {
                    fprintf(stderr, "turnload: bad -a source IPv4 %s\n", ip);
                    return 2;
                }
                g_nsources++;
            }
        }
        else { fprintf(stderr, "turnload: unknown option %s\n", o); return 2; }
    }
    if (payload < 8 || payload > 1200 || N < 1 || window_ < 1) { fprintf(stderr, "turnload: bad option value\n"); return 2; }
    struct rlimit rl = {N + 1024, N + 1024};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) { getrlimit(RLIMIT_NOFILE, &rl); if ((int)rl.rlim_cur < N + 64) { fprintf(stderr, "turnload: cannot open %d sockets (ulimit -n)\n", N); return 2; } }
    srand((unsigned)(getpid() ^ (unsigned)(now() * 1e6)));

    gso_probe();
    ep = epoll_create1(0);
    C = calloc((size_t)N, sizeof *C);
    int bufsize = 1 << 20;
    for (int i = 0; i < N; i++) {
        C[i].fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (C[i].fd < 0) { perror("turnload: socket"); return 1; }
        if (N <= 256) {
            setsockopt(C[i].fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
            setsockopt(C[i].fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
        }
        if (g_nsources > 0) {
            struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = g_sources[i % g_nsources]};
            if (bind(C[i].fd, (struct sockaddr *)&src, sizeof src) != 0) { perror("turnload: bind -a"); return 1; }
        }
        if (connect(C[i].fd, (struct sockaddr *)&server, sizeof server) != 0) { perror("turnload: connect"); return 1; }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, C[i].fd, &ev);
        C[i].state = S_ALLOC0;
    }
    peer_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    memset(&peer, 0, sizeof peer);
    peer.sin_family = AF_INET;
    if (inet_pton(AF_INET, peer_ip, &peer.sin_addr) != 1) { fprintf(stderr, "turnload: bad peer IPv4 %s\n", peer_ip); return 2; }
    bufsize = 8 << 20;
    setsockopt(peer_fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    setsockopt(peer_fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    bind(peer_fd, (struct sockaddr *)&peer, sizeof peer);
    socklen_t sl = sizeof peer;
    getsockname(peer_fd, (struct sockaddr *)&peer, &sl);
    struct epoll_event pev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, peer_fd, &pev);

    int ok = 0;
    double t0 = now();
    int left = run_transactions(S_ALLOC0, setup_timeout, &ok);
    double setup = now() - t0;
    int failed = 0, first_error = 0;
    for (int i = 0; i < N; i++) if (C[i].state == S_FAILED) { failed++; if (!first_error) first_error = C[i].error; }
    printf("setup ok=%d failed=%d unanswered=%d seconds=%.3f per_s=%.0f first_error=%d "
           "retransmits=%ld challenges=%ld\n",
           ok, failed, left, setup, ok / (setup > 0 ? setup : 1e-9), first_error,
           setup_retransmits, setup_challenges);
    fflush(stdout);
    if (ok == 0) { printf("result mode=%s error=no_allocation first_error=%d\n", mode, first_error); return 1; }

    if (strcmp(mode, "alloc") == 0) {
        char line[64];
        if (!fgets(line, sizeof line, stdin)) line[0] = 0;  /* hold: the caller measures memory */
        double r0 = now();
        int refreshed = refresh_all(600);
        double refresh_seconds = now() - r0;
        int released = refresh_all(0);
        printf("result mode=alloc allocations=%d refreshed=%d released=%d seconds=%.3f alloc_per_s=%.0f "
               "refresh_seconds=%.3f\n", ok, refreshed, released, setup, ok / setup, refresh_seconds);
        return 0;
    }
    traffic();
    fflush(stdout);
    int released = refresh_all(0);
    printf("released=%d\n", released);
    return 0;
}

/* ---------------------------------------------------------------- TURN over TCP: the traffic */

/*
 * stream(fds, peer_fd, frame_len, window, seconds): the traffic phase of `natkit bench turn
 * --transport tcp` (natkit/bench/turn_stream.py makes the connections, allocations and
 * channels, blocking, then calls this). Every connection keeps WINDOW frames of frame_len
 * bytes (one ChannelData frame, its payload a multiple of 4: no padding) in flight: what comes
 * back is counted in bytes, and each read's complete frames are answered with as many new
 * ones in one send. peer_fd (>= 0) is the peer: a UDP socket that reflects every datagram to
 * the relay address it came from, read with recvmmsg and answered with GSO sends, so that the
 * driver's core does far less per packet than a relay and the server is what is measured.
 * After SECONDS, at most 1 s more for what is in flight to come back.
 */
enum { ST_READ = 256 << 10, ST_OUT = 256 << 10 };
typedef struct {
    int fd, want_out;
    long partial;          /* bytes of a frame not yet complete */
    long owed;             /* bytes to send, not yet taken by the socket */
    long phase;            /* where in a frame the next byte sent is */
} st_conn;

static int st_send(int ep_, st_conn *c, uint32_t id, const unsigned char *frames, long frame_len,
                   long cap) {
    while (c->owed > 0) {
        long n = c->owed < cap - c->phase ? c->owed : cap - c->phase;
        ssize_t r = send(c->fd, frames + c->phase, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (r <= 0) break;
        c->owed -= r;
        c->phase = (c->phase + r) % frame_len;
        if (r < n) break;
    }
    int want = c->owed > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = id};
        epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

static PyObject *mod_stream(PyObject *mod, PyObject *args) {
    PyObject *list;
    int pfd, window;
    long frame_len;
    double secs;
    (void)mod;
    if (!PyArg_ParseTuple(args, "O!ilid", &PyList_Type, &list, &pfd, &frame_len, &window, &secs))
        return NULL;
    Py_ssize_t n = PyList_Size(list);
    if (n < 1 || n > 4096 || frame_len < 8 || frame_len > 1500 || window < 1 || secs <= 0)
        return PyErr_Format(PyExc_ValueError, "stream(): 1-4096 fds, a frame of 8-1500 bytes");
    st_conn *cs = calloc((size_t)n, sizeof *cs);
    long cap = (ST_OUT / frame_len) * frame_len;
    unsigned char *frames = malloc((size_t)cap), *rbuf = malloc(ST_READ);
    rx_batch *b = pfd >= 0 ? rx_new() : NULL;
    int ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (cs == NULL || frames == NULL || rbuf == NULL || (pfd >= 0 && b == NULL) || ep_ < 0) {
        free(cs); free(frames); free(rbuf); free(b);
        if (ep_ >= 0) close(ep_);
        return PyErr_NoMemory();
    }
    for (long off = 0; off < cap; off += frame_len) {
        put16(frames + off, CHANNEL);
        put16(frames + off + 2, (unsigned)(frame_len - 4));
        memset(frames + off + 4, 0x5a, (size_t)(frame_len - 4));
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        cs[i].fd = (int)PyLong_AsLong(PyList_GetItem(list, i));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (cs[i].fd < 0 || epoll_ctl(ep_, EPOLL_CTL_ADD, cs[i].fd, &ev) != 0) {
            free(cs); free(frames); free(rbuf); free(b); close(ep_);
            if (!PyErr_Occurred()) PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
    }
    if (pfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
        epoll_ctl(ep_, EPOLL_CTL_ADD, pfd, &ev);
        gso_probe();
        peer_fd = pfd;
        reflect_lost = 0;
    }
    long sent = 0, received = 0, at_deadline = 0, reflected = 0, failed = 0;
    double t0, elapsed = 0, cpu0, cpu;
    Py_BEGIN_ALLOW_THREADS
    struct epoll_event evs[256];
    t0 = now();
    cpu0 = cpu_seconds();
    double end = t0 + secs, drain = end + 1.0;
    int sending = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        cs[i].owed = (long)window * frame_len;
        sent += window;
        if (st_send(ep_, &cs[i], (uint32_t)i, frames, frame_len, cap) != 0) failed = 1;
    }
    while (!failed) {
        double t = now();
        if (sending && t >= end) {
            sending = 0;
            elapsed = t - t0;
            at_deadline = received;
        }
        if (!sending && (received >= sent || t >= drain)) break;
        int k = epoll_wait(ep_, evs, 256, 100);
        for (int e = 0; e < k && !failed; e++) {
            uint32_t id = evs[e].data.u32;
            if (id == 0xffffffffu) {
                for (int round = 0; round < 16; round++) {
                    int r = rx_read(b, pfd, RX);
                    if (r <= 0) break;
                    reflected += r;
                    reflect(b, r);
                    if (r < RX) break;
                }
                continue;
            }
            st_conn *c = &cs[id];
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                long got = 0;
                for (;;) {
                    ssize_t r = recv(c->fd, rbuf, ST_READ, MSG_DONTWAIT);
                    if (r < 0 && errno == EINTR) continue;
                    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) { failed = 2; break; }
                    if (r < 0) break;
                    got += r;
                    if (r < ST_READ) break;
                }
                long total = c->partial + got, whole = total / frame_len;
                c->partial = total % frame_len;
                received += whole;
                if (sending && whole) {
                    c->owed += whole * frame_len;
                    sent += whole;
                }
            }
            if (c->owed && st_send(ep_, c, id, frames, frame_len, cap) != 0) failed = 2;
        }
    }
    cpu = cpu_seconds() - cpu0;
    if (sending) { elapsed = now() - t0; at_deadline = received; }
    Py_END_ALLOW_THREADS
    long lost = reflect_lost;
    free(cs); free(frames); free(rbuf); free(b); close(ep_);
    if (failed)
        return PyErr_Format(PyExc_ConnectionError, "the server closed a connection during the run");
    return Py_BuildValue("{s:l,s:l,s:d,s:l,s:d,s:l,s:l}", "sent", sent, "received", received,
                         "seconds", elapsed, "received_at_deadline", at_deadline, "cpu", cpu,
                         "peer_rx", reflected, "peer_lost", lost);
}

/* ---------------------------------------------------------------- the Python module */

/* main(argv) -> exit status: the driver as a program (argv[0] is its name), once per process
 * (its state is global). Runs with the GIL released; its output goes to the C stdout. */
static PyObject *mod_main(PyObject *mod, PyObject *arg) {
    static int ran = 0;
    (void)mod;
    if (ran)
        return PyErr_Format(PyExc_RuntimeError, "the TURN load driver runs once per process");
    if (!PyList_Check(arg))
        return PyErr_Format(PyExc_TypeError, "main() takes a list of str");
    Py_ssize_t argc = PyList_Size(arg);
    if (argc < 1 || argc > 64)
        return PyErr_Format(PyExc_ValueError, "main() takes 1 to 64 arguments");
    char **argv = calloc((size_t)argc + 1, sizeof(char *));
    if (argv == NULL)
        return PyErr_NoMemory();
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < argc; i++) {
        PyObject *item = PyList_GetItem(arg, i); /* borrowed */
        const char *text = item != NULL ? PyUnicode_AsUTF8AndSize(item, NULL) : NULL;
        if (text == NULL)
            goto done;
        size_t n = strlen(text) + 1;
        argv[i] = malloc(n);
        if (argv[i] == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(argv[i], text, n);
    }
    ran = 1;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = turnload_main((int)argc, argv);
    fflush(stdout);
    fflush(stderr);
    Py_END_ALLOW_THREADS
    result = PyLong_FromLong(status);
done:
    for (Py_ssize_t i = 0; i < argc; i++)
        free(argv[i]);
    free(argv);
    return result;
}

static PyMethodDef module_methods[] = {
    {"main", mod_main, METH_O, "main(argv) -> exit status (see the source's header)."},
    {"stream", mod_stream, METH_VARARGS,
     "stream(fds, peer_fd, frame_len, window, seconds) -> counters: TURN-over-TCP traffic "
     "(see the source); GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "natkit.bench._turnload",
    "The TURN load driver of `natkit bench turn` (GIL released while it runs).", 0,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__turnload(void) { return PyModuleDef_Init(&module_def); }
