/*
 * The TURN relay's control fast path: see _turnctl.h. Today: the 401 challenge to the
 * credential-less first request of an authenticated method (the first half of every
 * Allocate), answered in the relay's C thread instead of the Python engine.
 *
 * What qualifies is exactly what the engine's _quick_challenge answers without decoding: a
 * request of Allocate, Refresh, CreatePermission or ChannelBind, the magic cookie, a length
 * that matches, and only REQUESTED-TRANSPORT, LIFETIME (4 bytes each) and DONT-FRAGMENT
 * (empty), each at most once. The reply is the engine's challenge with the nonce the engine's
 * NonceIssuer would issue: cookie prefix + expiry (hex, 10 digits) + the first 20 hex digits
 * of HMAC-SHA256(secret, "<expiry hex>|<client IP>"), so the engine accepts it on the
 * authenticated request that follows.
 *
 * Authenticated Allocates (when Python configured them: static users, no quota limit, no
 * SOFTWARE, no bandwidth cap): a request with exactly REQUESTED-TRANSPORT (UDP), LIFETIME
 * (optional), USERNAME, REALM, NONCE, MESSAGE-INTEGRITY and FINGERPRINT (optional), from an
 * IPv4 client without an allocation, whose realm, nonce (issued to that IP, not expired) and
 * HMAC-SHA1 verify against a configured user's key, takes a spare relay socket Python bound
 * and watches (nk_ctl_add_spare; with none left it is Python's), and is answered with the
 * engine's Allocate success (the
 * bytes natkit/turn/wire.py allocate_success builds). The caller hands Python a record of it
 * (struct nk_ctl_made) and the engine adopts the allocation: its state, quota and lifetime
 * stay the engine's. Anything else, a failed check included, is Python's, unchanged (the
 * engine then answers it, errors and failure brakes included).
 *
 * Error responses to unauthenticated UDP sources are budgeted (a source proves nothing, and
 * our 401s could be aimed at a victim). This path answers a source only out of replies the
 * engine gave it back for requests that verified (nk_ctl_credit), up to the engine's burst:
 * a source that never verified, or has spent them, is Python's, whose own budget decides.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA1_Init & co: a keyed state copied per message */
#include "_turnctl.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CTL_NONCES 1024   /* nonces cached per (IP, expiry), direct-mapped */
#define CTL_BUDGETS 4096  /* sources with replies to spend, direct-mapped */
#define CTL_OWN_MAX 64    /* relay IPs whose port ranges are the relay's own */
#define CTL_PART_MAX 256  /* the challenge's attributes before or after NONCE */

#define M_ALLOCATE 0x003
#define M_REFRESH 0x004
#define M_CREATE_PERMISSION 0x008
#define M_CHANNEL_BIND 0x009
#define A_REQUESTED_TRANSPORT 0x0019
#define A_LIFETIME 0x000D
#define A_DONT_FRAGMENT 0x001A
#define A_NONCE 0x0015
#define A_USERNAME 0x0006
#define A_REALM 0x0014
#define A_MESSAGE_INTEGRITY 0x0008
#define A_FINGERPRINT 0x8028
#define A_XOR_RELAYED_ADDRESS 0x0016
#define A_XOR_MAPPED_ADDRESS 0x0020
#define CTL_USERS 16      /* static users this path knows (more: Python's) */
#define CTL_SPARES 1024   /* spare relay sockets held */
#define CTL_HANDED 65536  /* clients whose Allocate Python answers, direct-mapped */
#define CTL_HANDED_S 45.0 /* ... for this long: a client's retransmissions (RFC 8489 Rc=7) */

struct ctl_nonce {
    uint8_t used, family;
    uint8_t ip[16];
    int64_t expiry;
    uint8_t len;
    char text[64];
};

struct ctl_budget {
    uint8_t used, family;
    uint8_t ip[16];
    uint16_t left;
};

struct ctl_own {
    uint8_t family;
    uint8_t ip[16];
    uint16_t lo, hi;
};

struct ctl_user {
    uint16_t len;
    uint8_t name[NK_CTL_USER_MAX];
    uint8_t key[16];
    SHA_CTX inner, outer; /* HMAC-SHA1 with this key: the states after ipad and opad */
};

static void ctl_hmac_key(struct ctl_user *u) {
    uint8_t pad[64];
    memset(pad, 0x36, sizeof pad);
    for (int i = 0; i < 16; i++)
        pad[i] ^= u->key[i];
    SHA1_Init(&u->inner);
    SHA1_Update(&u->inner, pad, sizeof pad);
    memset(pad, 0x5c, sizeof pad);
    for (int i = 0; i < 16; i++)
        pad[i] ^= u->key[i];
    SHA1_Init(&u->outer);
    SHA1_Update(&u->outer, pad, sizeof pad);
}

/* HMAC-SHA1(user's key, head (4 bytes) + d[4:n]): a STUN message with its length replaced. */
static void ctl_hmac(const struct ctl_user *u, const uint8_t head[4], const uint8_t *d, size_t n,
                     uint8_t mac[20]) {
    SHA_CTX c = u->inner;
    uint8_t inner[20];
    SHA1_Update(&c, head, 4);
    SHA1_Update(&c, d + 4, n - 4);
    SHA1_Final(inner, &c);
    c = u->outer;
    SHA1_Update(&c, inner, 20);
    SHA1_Final(mac, &c);
}

struct ctl_spare {
    int fd;
    uint8_t ip[4];
    uint16_t port;
};

struct ctl_handed {
    double at;
    uint8_t ip[4];
    uint16_t port;
    uint8_t many; /* two live clients met in this slot: every client of it is Python's */
};

struct nk_ctl {
    int configured;
    int allocates; /* authenticated Allocates are served here */
    uint8_t realm[CTL_PART_MAX];
    size_t realm_len;
    struct ctl_user users[CTL_USERS];
    unsigned nusers;
    uint32_t default_lifetime, max_lifetime;
    struct ctl_spare spares[CTL_SPARES];
    unsigned nspares;
    uint64_t made, no_spare;
    /* clients whose last Allocate went to Python: their retransmission must go there too
     * (answered here, it would get a second allocation with another relayed address) */
    struct ctl_handed handed[CTL_HANDED];
    uint8_t secret[64];
    size_t secret_len;
    double lifetime;
    char prefix[32];
    size_t prefix_len;
    uint8_t pre[CTL_PART_MAX], post[CTL_PART_MAX];
    size_t pre_len, post_len;
    unsigned cap; /* 0: not budgeted */
    struct ctl_own own[CTL_OWN_MAX];
    unsigned nown;
    struct ctl_nonce nonces[CTL_NONCES];
    struct ctl_budget budgets[CTL_BUDGETS];
    uint64_t challenges, no_budget, passed;
};

struct nk_ctl *nk_ctl_new(void) { return calloc(1, sizeof(struct nk_ctl)); }

void nk_ctl_free(struct nk_ctl *t) { free(t); }

static uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static void put16(uint8_t *p, unsigned v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t ip_hash(uint8_t family, const uint8_t ip[16]) {
    uint32_t h = 2166136261u ^ family; /* FNV-1a */
    for (int i = 0; i < (family == 6 ? 16 : 4); i++)
        h = (h ^ ip[i]) * 16777619u;
    return h;
}

static int ip_eq(uint8_t fa, const uint8_t *a, uint8_t fb, const uint8_t *b) {
    return fa == fb && memcmp(a, b, fa == 6 ? 16 : 4) == 0;
}

int nk_ctl_configure(struct nk_ctl *t, const uint8_t *secret, size_t secret_len, double lifetime,
                     const uint8_t *prefix, size_t prefix_len, const uint8_t *pre, size_t pre_len,
                     const uint8_t *post, size_t post_len, unsigned budget_cap,
                     const uint8_t *own, size_t own_len) {
    if (secret_len > sizeof t->secret || prefix_len + 30 > sizeof t->nonces[0].text - 1 ||
        prefix_len >= sizeof t->prefix || pre_len > CTL_PART_MAX || post_len > CTL_PART_MAX ||
        own_len % 21 != 0 || own_len / 21 > CTL_OWN_MAX || lifetime < 0 || lifetime > 1e9)
        return -1;
    memcpy(t->secret, secret, secret_len);
    t->secret_len = secret_len;
    t->lifetime = lifetime;
    memcpy(t->prefix, prefix, prefix_len);
    t->prefix_len = prefix_len;
    memcpy(t->pre, pre, pre_len);
    t->pre_len = pre_len;
    memcpy(t->post, post, post_len);
    t->post_len = post_len;
    t->cap = budget_cap > 0xFFFF ? 0xFFFF : budget_cap;
    t->nown = 0;
    for (size_t off = 0; off < own_len; off += 21) {
        struct ctl_own *o = &t->own[t->nown++];
        o->family = own[off];
        memcpy(o->ip, own + off + 1, 16);
        memcpy(&o->lo, own + off + 17, 2);
        memcpy(&o->hi, own + off + 19, 2);
    }
    memset(t->nonces, 0, sizeof t->nonces); /* the secret may have changed */
    t->configured = 1;
    return 0;
}

static const struct ctl_nonce *ctl_nonce_at(struct nk_ctl *t, uint8_t family,
                                            const uint8_t ip[16], int64_t expiry) {
    struct ctl_nonce *e = &t->nonces[ip_hash(family, ip) % CTL_NONCES];
    if (e->used && e->expiry == expiry && ip_eq(e->family, e->ip, family, ip))
        return e;
    char host[INET6_ADDRSTRLEN], msg[16 + INET6_ADDRSTRLEN];
    if (inet_ntop(family == 6 ? AF_INET6 : AF_INET, ip, host, sizeof host) == NULL)
        return NULL;
    int mlen = snprintf(msg, sizeof msg, "%010llx|%s", (unsigned long long)expiry, host);
    if (mlen < 0 || (size_t)mlen >= sizeof msg)
        return NULL;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (HMAC(EVP_sha256(), t->secret, (int)t->secret_len, (const unsigned char *)msg,
             (size_t)mlen, mac, &maclen) == NULL || maclen < 10)
        return NULL;
    memcpy(e->text, t->prefix, t->prefix_len);
    size_t pos = t->prefix_len;
    pos += (size_t)snprintf(e->text + pos, sizeof e->text - pos, "%010llx",
                            (unsigned long long)expiry);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 10; i++) {
        e->text[pos++] = hex[mac[i] >> 4];
        e->text[pos++] = hex[mac[i] & 15];
    }
    e->text[pos] = 0;
    e->len = (uint8_t)pos;
    e->used = 1;
    e->family = family;
    memcpy(e->ip, ip, 16);
    e->expiry = expiry;
    return e;
}

static const struct ctl_nonce *ctl_nonce(struct nk_ctl *t, uint8_t family, const uint8_t ip[16],
                                         double now) {
    return ctl_nonce_at(t, family, ip, (int64_t)(now + t->lifetime)); /* int(now + lifetime) */
}

int nk_ctl_nonce(struct nk_ctl *t, uint8_t family, const uint8_t ip[16], double now, char *out) {
    if (!t->configured)
        return -1;
    const struct ctl_nonce *e = ctl_nonce(t, family, ip, now);
    if (e == NULL)
        return -1;
    memcpy(out, e->text, (size_t)e->len + 1);
    return e->len;
}

static struct ctl_budget *ctl_budget(struct nk_ctl *t, uint8_t family, const uint8_t ip[16]) {
    return &t->budgets[ip_hash(family, ip) % CTL_BUDGETS];
}

void nk_ctl_credit(struct nk_ctl *t, uint8_t family, const uint8_t ip[16]) {
    if (t->cap == 0)
        return;
    struct ctl_budget *b = ctl_budget(t, family, ip);
    if (!b->used || !ip_eq(b->family, b->ip, family, ip)) {
        /* the slot's source loses what it had left: it is Python's again, never answered more */
        b->used = 1;
        b->family = family;
        memset(b->ip, 0, sizeof b->ip);
        memcpy(b->ip, ip, family == 6 ? 16 : 4);
        b->left = 0;
    }
    if (b->left < t->cap)
        b->left++;
}

static int ctl_own(const struct nk_ctl *t, uint8_t family, const uint8_t ip[16], uint16_t port) {
    for (unsigned i = 0; i < t->nown; i++) {
        const struct ctl_own *o = &t->own[i];
        if (port >= o->lo && port <= o->hi && ip_eq(o->family, o->ip, family, ip))
            return 1;
    }
    return 0;
}

/* A credential-less request the engine answers with its quick 401: the method, else 0. */
static unsigned ctl_plain_request(const uint8_t *d, uint32_t n) {
    if (n < 20 || n > 20 + 36 || 20u + get16(d + 2) != n || d[4] != 0x21 || d[5] != 0x12 ||
        d[6] != 0xA4 || d[7] != 0x42)
        return 0;
    unsigned method = get16(d); /* a request: class bits 0, so the type is the method */
    if (method != M_ALLOCATE && method != M_REFRESH && method != M_CREATE_PERMISSION &&
        method != M_CHANNEL_BIND)
        return 0;
    unsigned seen = 0;
    for (uint32_t pos = 20; pos < n;) {
        if (pos + 4 > n)
            return 0;
        unsigned type = get16(d + pos), len = get16(d + pos + 2), bit;
        if (type == A_REQUESTED_TRANSPORT && len == 4)
            bit = 1;
        else if (type == A_LIFETIME && len == 4)
            bit = 2;
        else if (type == A_DONT_FRAGMENT && len == 0)
            bit = 4;
        else
            return 0;
        if (seen & bit)
            return 0;
        seen |= bit;
        pos += 4 + len;
        if (pos > n)
            return 0;
    }
    return method;
}

int nk_ctl_allocate_config(struct nk_ctl *t, const uint8_t *realm, size_t realm_len,
                           const uint8_t *users, size_t users_len, uint32_t default_lifetime,
                           uint32_t max_lifetime) {
    if (realm_len > CTL_PART_MAX)
        return -1;
    t->allocates = 0;
    unsigned nusers = 0;
    for (size_t off = 0; off < users_len;) {
        uint16_t len;
        if (off + 2 > users_len)
            return -1;
        memcpy(&len, users + off, 2);
        if (len > NK_CTL_USER_MAX || off + 2 + len + 16 > users_len || nusers >= CTL_USERS)
            return -1;
        struct ctl_user *u = &t->users[nusers++];
        u->len = len;
        memcpy(u->name, users + off + 2, len);
        memcpy(u->key, users + off + 2 + len, 16);
        ctl_hmac_key(u);
        off += 2 + (size_t)len + 16;
    }
    memcpy(t->realm, realm, realm_len);
    t->realm_len = realm_len;
    t->nusers = nusers;
    t->default_lifetime = default_lifetime;
    t->max_lifetime = max_lifetime;
    t->allocates = nusers > 0;
    return 0;
}

int nk_ctl_add_spare(struct nk_ctl *t, int fd, const uint8_t ip[4], uint16_t port) {
    if (t->nspares >= CTL_SPARES)
        return -1;
    struct ctl_spare *s = &t->spares[t->nspares++];
    s->fd = fd;
    memcpy(s->ip, ip, 4);
    s->port = port;
    return 0;
}

unsigned nk_ctl_spares(const struct nk_ctl *t) { return t->nspares; }

unsigned nk_ctl_take_spares(struct nk_ctl *t, int *fds, unsigned max) {
    unsigned k = 0;
    while (t->nspares > 0 && k < max)
        fds[k++] = t->spares[--t->nspares].fd;
    return k;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t ctl_crc32(const uint8_t *p, size_t n) { /* zlib's CRC-32 (RFC 8489 14.7) */
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static int ctl_hex(const uint8_t *p, size_t n, int64_t *out) {
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int c = p[i], x;
        if (c >= '0' && c <= '9')
            x = c - '0';
        else if (c >= 'a' && c <= 'f')
            x = c - 'a' + 10;
        else
            return -1; /* (the engine's own nonces are lower case: others are Python's) */
        v = v * 16 + x;
    }
    *out = v;
    return 0;
}

/*
 * An authenticated Allocate this path can serve: its reply at reply (> 0) and *made filled,
 * or 0 (Python's). The checks are the engine's for this shape of request; any doubt is 0.
 */
static int ctl_allocate(struct nk_ctl *t, const uint8_t ip[16], uint16_t port, const uint8_t *d,
                        uint32_t n, double now, uint8_t *reply, struct nk_ctl_made *made) {
    uint32_t len = get16(d + 2);
    if (20 + len != n || (len & 3) || d[4] != 0x21 || d[5] != 0x12 || d[6] != 0xA4 ||
        d[7] != 0x42)
        return 0;
    const uint8_t *user = NULL, *realm = NULL, *nonce = NULL, *life = NULL;
    unsigned ulen = 0, rlen = 0, nlen = 0, seen = 0;
    uint32_t mi_at = 0, fp_at = 0;
    for (uint32_t pos = 20; pos < n;) {
        if (pos + 4 > n)
            return 0;
        unsigned type = get16(d + pos), alen = get16(d + pos + 2), bit;
        uint32_t next = pos + 4 + ((alen + 3) & ~3u);
        if (next > n || fp_at)
            return 0; /* nothing follows FINGERPRINT */
        const uint8_t *v = d + pos + 4;
        if (mi_at && type != A_FINGERPRINT)
            return 0; /* after MESSAGE-INTEGRITY only FINGERPRINT */
        switch (type) {
        case A_REQUESTED_TRANSPORT:
            if (alen != 4 || v[0] != 17)
                return 0;
            bit = 1;
            break;
        case A_LIFETIME:
            if (alen != 4)
                return 0;
            life = v;
            bit = 2;
            break;
        case A_USERNAME:
            user = v, ulen = alen, bit = 4;
            break;
        case A_REALM:
            realm = v, rlen = alen, bit = 8;
            break;
        case A_NONCE:
            nonce = v, nlen = alen, bit = 16;
            break;
        case A_MESSAGE_INTEGRITY:
            if (alen != 20)
                return 0;
            mi_at = pos;
            bit = 32;
            break;
        case A_FINGERPRINT:
            if (alen != 4)
                return 0;
            fp_at = pos;
            bit = 64;
            break;
        default:
            return 0;
        }
        if (seen & bit)
            return 0;
        seen |= bit;
        pos = next;
    }
    if ((seen & (1 | 4 | 8 | 16 | 32)) != (1 | 4 | 8 | 16 | 32))
        return 0;
    if (fp_at) {
        uint32_t want = ctl_crc32(d, fp_at) ^ 0x5354554Eu;
        const uint8_t *v = d + fp_at + 4;
        if (((uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3]) != want)
            return 0;
    }
    if (rlen != t->realm_len || memcmp(realm, t->realm, rlen) != 0)
        return 0;
    /* the nonce: one this path (or the engine: the same scheme) issued to this IP, live */
    int64_t expiry;
    if (nlen != t->prefix_len + 30 || memcmp(nonce, t->prefix, t->prefix_len) != 0 ||
        ctl_hex(nonce + t->prefix_len, 10, &expiry) != 0 || !((double)expiry > now))
        return 0;
    const struct ctl_nonce *good = ctl_nonce_at(t, 4, ip, expiry);
    if (good == NULL || good->len != nlen || CRYPTO_memcmp(good->text, nonce, nlen) != 0)
        return 0;
    const struct ctl_user *u = NULL;
    for (unsigned i = 0; i < t->nusers; i++)
        if (t->users[i].len == ulen && memcmp(t->users[i].name, user, ulen) == 0) {
            u = &t->users[i];
            break;
        }
    if (u == NULL)
        return 0;
    /* MESSAGE-INTEGRITY: HMAC-SHA1 over the message up to it, its length as if it ended there */
    uint8_t head[4];
    memcpy(head, d, 2);
    put16(head + 2, mi_at - 20 + 24);
    uint8_t mac[20];
    ctl_hmac(u, head, d, mi_at, mac);
    if (CRYPTO_memcmp(mac, d + mi_at + 4, 20) != 0)
        return 0;
    if (t->nspares == 0) {
        /* Python's: the caller marks the client handed over, so its retransmission goes to
         * the engine too (never a second allocation from here) */
        t->no_spare++;
        return 0;
    }
    /* the engine's lifetime: the default without LIFETIME or with 0, else clamped */
    uint32_t lifetime = t->default_lifetime;
    if (life != NULL) {
        uint32_t want = (uint32_t)life[0] << 24 | (uint32_t)life[1] << 16 |
                        (uint32_t)life[2] << 8 | life[3];
        if (want != 0) {
            lifetime = want < t->max_lifetime ? want : t->max_lifetime;
            if (lifetime < t->default_lifetime)
                lifetime = t->default_lifetime;
        }
    }
    const struct ctl_spare *sp = &t->spares[--t->nspares];
    /* the success: XOR-RELAYED-ADDRESS, LIFETIME, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY,
     * FINGERPRINT when the request had one */
    uint8_t *p = reply + 20;
    put16(p, A_XOR_RELAYED_ADDRESS);
    put16(p + 2, 8);
    p[4] = 0;
    p[5] = 1;
    put16(p + 6, sp->port ^ 0x2112);
    for (int i = 0; i < 4; i++)
        p[8 + i] = sp->ip[i] ^ d[4 + i];
    p += 12;
    put16(p, A_LIFETIME);
    put16(p + 2, 4);
    put32(p + 4, lifetime);
    p += 8;
    put16(p, A_XOR_MAPPED_ADDRESS);
    put16(p + 2, 8);
    p[4] = 0;
    p[5] = 1;
    put16(p + 6, port ^ 0x2112);
    for (int i = 0; i < 4; i++)
        p[8 + i] = ip[i] ^ d[4 + i];
    p += 12;
    uint32_t at = (uint32_t)(p - reply);
    put16(reply, 0x0100 | M_ALLOCATE);
    put16(reply + 2, at - 20 + 24);
    memcpy(reply + 4, d + 4, 16);
    ctl_hmac(u, reply, reply, at, mac);
    put16(p, A_MESSAGE_INTEGRITY);
    put16(p + 2, 20);
    memcpy(p + 4, mac, 20);
    p += 24;
    at = (uint32_t)(p - reply);
    if (fp_at) {
        put16(reply + 2, at - 20 + 8);
        uint32_t crc = ctl_crc32(reply, at) ^ 0x5354554Eu;
        put16(p, A_FINGERPRINT);
        put16(p + 2, 4);
        put32(p + 4, crc);
        p += 8;
        at += 8;
    }
    put16(reply + 2, at - 20);
    made->relay_fd = sp->fd;
    made->lifetime = lifetime;
    memcpy(made->tid, d + 8, 12);
    made->user_len = (uint16_t)ulen;
    made->resp_len = (uint16_t)at;
    memcpy(made->user, user, ulen);
    t->made++;
    return (int)at;
}

int nk_ctl_request(struct nk_ctl *t, uint8_t family, const uint8_t ip[16], uint16_t port,
                   const uint8_t *d, uint32_t n, double now, int has_alloc, uint8_t *reply,
                   struct nk_ctl_made *made) {
    made->relay_fd = -1;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    if (!t->configured || (family != 4 && family != 6) ||
        (family == 6 && memcmp(ip, mapped, 12) == 0)) /* the engine canonicalises those */
        return 0;
    if (ctl_own(t, family, ip, port)) {
        t->passed++;
        return 0;
    }
    unsigned method = ctl_plain_request(d, n);
    if (method == 0) {
        if (family == 4 && get16(d) == M_ALLOCATE) { /* (marked even while not served) */
            struct ctl_handed *h = &t->handed[(ip_hash(4, ip) ^ port * 2654435761u) % CTL_HANDED];
            int live = now - h->at < CTL_HANDED_S && now >= h->at;
            int same = h->port == port && memcmp(h->ip, ip, 4) == 0;
            int recent = live && (same || h->many);
            int r = 0;
            if (t->allocates && !has_alloc && !recent)
                r = ctl_allocate(t, ip, port, d, n, now, reply, made);
            if (r > 0) {
                /* a verified request: its source's error budget gets one back, as the
                 * engine's */
                nk_ctl_credit(t, family, ip);
                return r;
            }
            /* a collision never forgets a live client (its retransmission would get a second
             * allocation here): the slot serves nobody until both are done */
            h->many = live && !same ? 1 : live ? h->many : 0;
            h->at = now;
            memcpy(h->ip, ip, 4);
            h->port = port;
        }
        t->passed++;
        return 0;
    }
    struct ctl_budget *b = NULL;
    if (t->cap) {
        b = ctl_budget(t, family, ip);
        if (!b->used || !ip_eq(b->family, b->ip, family, ip) || b->left == 0) {
            t->no_budget++;
            return 0;
        }
    }
    const struct ctl_nonce *nonce = ctl_nonce(t, family, ip, now);
    if (nonce == NULL) {
        t->passed++;
        return 0;
    }
    size_t npad = ((size_t)nonce->len + 3) & ~(size_t)3;
    size_t body = t->pre_len + 4 + npad + t->post_len;
    if (20 + body > NK_CTL_REPLY) {
        t->passed++;
        return 0;
    }
    put16(reply, 0x0110 | method); /* the error response of the method */
    put16(reply + 2, (unsigned)body);
    memcpy(reply + 4, d + 4, 16); /* cookie and transaction id */
    uint8_t *p = reply + 20;
    memcpy(p, t->pre, t->pre_len);
    p += t->pre_len;
    put16(p, A_NONCE);
    put16(p + 2, nonce->len);
    memcpy(p + 4, nonce->text, nonce->len);
    memset(p + 4 + nonce->len, 0, npad - nonce->len);
    p += 4 + npad;
    memcpy(p, t->post, t->post_len);
    if (b != NULL)
        b->left--;
    t->challenges++;
    return (int)(20 + body);
}

void nk_ctl_stats(const struct nk_ctl *t, uint64_t out[NK_CTL_NSTATS]) {
    out[0] = t->challenges;
    out[1] = t->no_budget;
    out[2] = t->passed;
    out[3] = t->made;
    out[4] = t->no_spare;
}
