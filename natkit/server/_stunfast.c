/*
 * The UDP Binding fast path of natkit's STUN responder.
 *
 * Optional: natkit compiles it with the system gcc on first use (natkit/server/_fastpath.py)
 * and falls back to pure Python without it. It answers only the requests whose response is
 * fully determined by the 20-byte header and the source address: a Binding request with the
 * magic cookie and no attribute but, optionally, a valid FINGERPRINT (what browsers and most
 * clients send to a STUN server). The answer is byte-for-byte what the general
 * path (natkit/server/_binding.py) builds. Everything else that looks like a STUN request is
 * handed back to Python; non-STUN datagrams, indications and responses are dropped and counted.
 *
 * Syscalls are batched (recvmmsg/sendmmsg), the caller releases the GIL (ctypes.CDLL), and
 * nothing is allocated per packet.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define NK_BATCH 64
#define NK_SLOT 4096 /* larger datagrams are truncated and dropped as garbage */
#define NK_OUT 512
#define NK_CTRL 64

struct nk_cfg {
    int32_t fd;
    int32_t family;     /* AF_INET or AF_INET6 */
    int32_t pktinfo;    /* 1: wildcard-bound socket with IP_PKTINFO / IPV6_RECVPKTINFO on */
    int32_t timeout_ms; /* return 0 after this long without traffic (the caller checks stop) */
    volatile int32_t stop;
    uint8_t origin[16];  /* the socket's address (network order) unless pktinfo */
    uint16_t origin_port; /* host order */
    uint16_t extra_len;   /* attributes appended after RESPONSE-ORIGIN (OTHER-ADDRESS, SOFTWARE) */
    uint8_t extra[256];
    uint64_t fast;     /* Binding responses sent here */
    uint64_t garbage;  /* datagrams that are not STUN at all */
    uint64_t ignored;  /* STUN indications and responses */
    uint64_t dropped;  /* slow-path packets dropped because the hand-over buffer was full */
    uint64_t send_errors;
};

static uint32_t crc_table[256];

/* Filled once when the library is loaded, before any serving thread runs. */
__attribute__((constructor)) static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_buf(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

enum { NK_FAST, NK_SLOW, NK_GARBAGE, NK_IGNORE };

/* What to do with a datagram; *fp is set when it ends with a valid FINGERPRINT. */
static int classify(const uint8_t *b, size_t len, int *fp) {
    *fp = 0;
    if (len < 20 || (b[0] & 0xC0)) return NK_GARBAGE;
    size_t mlen = rd16(b + 2);
    if (mlen + 20 != len || (mlen & 3)) return NK_GARBAGE;
    uint16_t type = rd16(b);
    if (type & 0x0110) return NK_IGNORE; /* indication, success or error response */
    if (type != 0x0001 || rd32(b + 4) != 0x2112A442u) return NK_SLOW;
    if (len == 20) return NK_FAST;
    /* Only a lone FINGERPRINT: any other attribute goes to the codec, which validates it. */
    if (len == 28 && rd16(b + 20) == 0x8028 && rd16(b + 22) == 4 &&
        (crc32_buf(b, 20) ^ 0x5354554Eu) == rd32(b + 24)) {
        *fp = 1;
        return NK_FAST;
    }
    return NK_SLOW;
}

/* Append an address attribute; xor_id is the 16 bytes cookie + transaction id or NULL. */
static size_t put_addr(uint8_t *o, uint16_t type, int family, const uint8_t *addr,
                       uint16_t port, const uint8_t *xor_id) {
    size_t alen = family == AF_INET ? 4 : 16;
    wr16(o, type);
    wr16(o + 2, (uint16_t)(4 + alen));
    o[4] = 0;
    o[5] = family == AF_INET ? 1 : 2;
    wr16(o + 6, xor_id ? port ^ 0x2112 : port);
    for (size_t k = 0; k < alen; k++) o[8 + k] = xor_id ? addr[k] ^ xor_id[k] : addr[k];
    return 8 + alen;
}

static size_t build(const struct nk_cfg *c, const uint8_t *req, int fp,
                    const struct sockaddr_storage *src, const uint8_t *local, uint8_t *o) {
    o[0] = 0x01; o[1] = 0x01;
    memcpy(o + 4, req + 4, 16);
    size_t p = 20;
    if (src->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)src;
        p += put_addr(o + p, 0x0020, AF_INET, (const uint8_t *)&s->sin_addr,
                      ntohs(s->sin_port), req + 4);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)src;
        p += put_addr(o + p, 0x0020, AF_INET6, (const uint8_t *)&s->sin6_addr,
                      ntohs(s->sin6_port), req + 4);
    }
    p += put_addr(o + p, 0x802B, c->family, local, c->origin_port, NULL);
    memcpy(o + p, c->extra, c->extra_len);
    p += c->extra_len;
    if (fp) {
        wr16(o + 2, (uint16_t)(p - 20 + 8));
        wr16(o + p, 0x8028);
        wr16(o + p + 2, 4);
        wr32(o + p + 4, crc32_buf(o, p) ^ 0x5354554Eu);
        p += 8;
    } else {
        wr16(o + 2, (uint16_t)(p - 20));
    }
    return p;
}

/* The destination address of a datagram from its IP_PKTINFO / IPV6_PKTINFO, or 0. */
static int local_of(struct msghdr *m, uint8_t *out, int *ifindex) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            memcpy(out, &pi.ipi_addr, 4);
            *ifindex = pi.ipi_ifindex;
            return 1;
        }
        if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            memcpy(out, &pi.ipi6_addr, 16);
            *ifindex = (int)pi.ipi6_ifindex;
            return 1;
        }
    }
    return 0;
}

/* Make the reply leave from the address the request was sent to. */
static size_t put_pktinfo(uint8_t *ctrl, int family, const uint8_t *local, int ifindex) {
    struct cmsghdr *cm = (struct cmsghdr *)ctrl;
    if (family == AF_INET) {
        struct in_pktinfo pi;
        memset(&pi, 0, sizeof pi);
        memcpy(&pi.ipi_spec_dst, local, 4);
        cm->cmsg_level = IPPROTO_IP;
        cm->cmsg_type = IP_PKTINFO;
        cm->cmsg_len = CMSG_LEN(sizeof pi);
        memcpy(CMSG_DATA(cm), &pi, sizeof pi);
        return CMSG_SPACE(sizeof pi);
    }
    struct in6_pktinfo pi;
    memset(&pi, 0, sizeof pi);
    memcpy(&pi.ipi6_addr, local, 16);
    pi.ipi6_ifindex = (unsigned)ifindex;
    cm->cmsg_level = IPPROTO_IPV6;
    cm->cmsg_type = IPV6_PKTINFO;
    cm->cmsg_len = CMSG_LEN(sizeof pi);
    memcpy(CMSG_DATA(cm), &pi, sizeof pi);
    return CMSG_SPACE(sizeof pi);
}

static void send_all(struct nk_cfg *c, struct mmsghdr *msgs, int n) {
    int done = 0, waited = 0;
    while (done < n) {
        int r = sendmmsg(c->fd, msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
        if (r > 0) { done += r; continue; }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !waited) {
            struct pollfd p = {c->fd, POLLOUT, 0};
            poll(&p, 1, 10);
            waited = 1;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        done++; /* this datagram cannot go (unreachable, buffer full): drop it, go on */
        c->send_errors++;
    }
}

/* Slow-path hand-over record: "<HHBB16s16s" (length, source port, family, has-local,
 * source address, local address) followed by the datagram. */
#define NK_REC 38

/* Scratch space for one socket; the caller allocates one per serving thread. */
struct nk_bufs {
    uint8_t r[NK_BATCH][NK_SLOT];
    uint8_t o[NK_BATCH][NK_OUT];
    uint8_t rc[NK_BATCH][NK_CTRL];
    uint8_t sc[NK_BATCH][NK_CTRL];
    struct sockaddr_storage names[NK_BATCH];
    struct mmsghdr in[NK_BATCH];
    struct mmsghdr out[NK_BATCH];
    struct iovec riov[NK_BATCH];
    struct iovec oiov[NK_BATCH];
};

size_t nk_bufs_size(void) { return sizeof(struct nk_bufs); }
size_t nk_cfg_size(void) { return sizeof(struct nk_cfg); }

/*
 * Serve until there is something for Python: returns the number of bytes of slow-path records
 * written to slow (> 0), 0 after timeout_ms without traffic or when stop is set, -errno on a
 * socket error. bufs is caller-owned scratch space of nk_bufs_size() bytes (one per socket).
 */
long nk_serve(struct nk_cfg *c, struct nk_bufs *B, uint8_t *slow, long slow_cap) {
    for (;;) {
        if (c->stop) return 0;
        for (int i = 0; i < NK_BATCH; i++) {
            B->riov[i].iov_base = B->r[i];
            B->riov[i].iov_len = NK_SLOT;
            struct msghdr *m = &B->in[i].msg_hdr;
            m->msg_name = &B->names[i];
            m->msg_namelen = sizeof B->names[i];
            m->msg_iov = &B->riov[i];
            m->msg_iovlen = 1;
            m->msg_control = c->pktinfo ? B->rc[i] : NULL;
            m->msg_controllen = c->pktinfo ? NK_CTRL : 0;
            m->msg_flags = 0;
        }
        int n = recvmmsg(c->fd, B->in, NK_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
            struct pollfd p = {c->fd, POLLIN, 0};
            int r = poll(&p, 1, c->timeout_ms);
            if (r == 0) return 0;
            if (r < 0 && errno != EINTR) return -errno;
            continue;
        }
        int k = 0;
        long used = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *m = &B->in[i].msg_hdr;
            size_t len = B->in[i].msg_len;
            if (m->msg_flags & MSG_TRUNC) { c->garbage++; continue; }
            if (B->names[i].ss_family != c->family) { c->garbage++; continue; }
            int fp;
            int what = classify(B->r[i], len, &fp);
            if (what == NK_GARBAGE) { c->garbage++; continue; }
            if (what == NK_IGNORE) { c->ignored++; continue; }
            uint8_t local[16];
            int ifindex = 0, has_local = 0;
            if (c->pktinfo) has_local = local_of(m, local, &ifindex);
            if (!has_local) memcpy(local, c->origin, 16);
            if (what == NK_SLOW || (c->pktinfo && !has_local)) {
                if (used + NK_REC + (long)len > slow_cap) { c->dropped++; continue; }
                uint8_t *r = slow + used;
                uint16_t port;
                memset(r, 0, NK_REC);
                if (c->family == AF_INET) {
                    struct sockaddr_in *s = (struct sockaddr_in *)&B->names[i];
                    port = ntohs(s->sin_port);
                    memcpy(r + 6, &s->sin_addr, 4);
                } else {
                    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&B->names[i];
                    port = ntohs(s->sin6_port);
                    memcpy(r + 6, &s->sin6_addr, 16);
                }
                r[0] = (uint8_t)len; r[1] = (uint8_t)(len >> 8);
                r[2] = (uint8_t)port; r[3] = (uint8_t)(port >> 8);
                r[4] = (uint8_t)c->family;
                r[5] = (uint8_t)has_local;
                if (has_local) memcpy(r + 22, local, 16);
                memcpy(r + NK_REC, B->r[i], len);
                used += NK_REC + (long)len;
                continue;
            }
            size_t olen = build(c, B->r[i], fp, &B->names[i], local, B->o[k]);
            B->oiov[k].iov_base = B->o[k];
            B->oiov[k].iov_len = olen;
            struct msghdr *s = &B->out[k].msg_hdr;
            s->msg_name = &B->names[i];
            s->msg_namelen = m->msg_namelen;
            s->msg_iov = &B->oiov[k];
            s->msg_iovlen = 1;
            s->msg_flags = 0;
            if (c->pktinfo) {
                s->msg_control = B->sc[k];
                s->msg_controllen = put_pktinfo(B->sc[k], c->family, local, ifindex);
            } else {
                s->msg_control = NULL;
                s->msg_controllen = 0;
            }
            k++;
        }
        if (k) {
            send_all(c, B->out, k);
            c->fast += (uint64_t)k;
        }
        if (used) return used;
    }
}
