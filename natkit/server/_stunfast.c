/*
 * natkit.server._stunfast: the UDP Binding fast path of natkit's STUN responder.
 *
 * A CPython extension module (limited API), built at install time by setup.py; without it
 * (not built, or NATKIT_NO_CEXT=1) natkit/server/_fastpath.py runs its pure-Python loop. It
 * answers only the requests whose response is fully determined by the 20-byte header and the
 * source address: a Binding request with the magic cookie and no attribute but, optionally, a
 * valid FINGERPRINT (what browsers and most clients send to a STUN server). The answer is
 * byte-for-byte what the general path (natkit/server/_binding.py) builds. Everything else that
 * looks like a STUN request is handed back to Python; non-STUN datagrams, indications and
 * responses are dropped and counted.
 *
 * Syscalls are batched (recvmmsg/sendmmsg), Responder.serve() releases the GIL while it
 * serves, and nothing is allocated per packet.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
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

/* Filled once when the module is imported, before any serving thread runs. */
static void crc_init(void) {
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

/*
 * Serve until there is something for Python: returns the number of bytes of slow-path records
 * written to slow (> 0), 0 after timeout_ms without traffic or when stop is set, -errno on a
 * socket error. B is the socket's scratch space (one per serving thread).
 */
static long nk_serve(struct nk_cfg *c, struct nk_bufs *B, uint8_t *slow, long slow_cap) {
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

/* ---------------------------------------------------------------- the Python module */

#define NK_SLOW_CAP (256 * 1024) /* slow-path records handed to Python per serve() call */

typedef struct {
    PyObject_HEAD
    struct nk_cfg cfg;
    struct nk_bufs *bufs;
    uint8_t *slow;
    int busy; /* serve() is running (in some thread, without the GIL) */
} Responder;

/* Copy an IPv4/IPv6 address given as 4 or 16 bytes; 0 and a ValueError otherwise. */
static int take_addr(const char *what, const char *b, Py_ssize_t n, int family, uint8_t *out) {
    if (n != (family == AF_INET ? 4 : 16)) {
        PyErr_Format(PyExc_ValueError, "%s: %d bytes for this family, got %zd", what,
                     family == AF_INET ? 4 : 16, n);
        return 0;
    }
    memset(out, 0, 16);
    memcpy(out, b, (size_t)n);
    return 1;
}

static PyObject *Responder_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd", "family", "pktinfo", "origin", "origin_port", "extra",
                            "timeout_ms", NULL};
    int fd, family, pktinfo, origin_port, timeout_ms = 100;
    const char *origin, *extra;
    Py_ssize_t origin_len, extra_len;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iipy#iy#|i", names, &fd, &family, &pktinfo,
                                     &origin, &origin_len, &origin_port, &extra, &extra_len,
                                     &timeout_ms))
        return NULL;
    if (family != AF_INET && family != AF_INET6)
        return PyErr_Format(PyExc_ValueError, "family must be AF_INET or AF_INET6");
    if (origin_port < 0 || origin_port > 65535 || timeout_ms < 1)
        return PyErr_Format(PyExc_ValueError, "bad origin_port or timeout_ms");
    if (extra_len > 256)
        return PyErr_Format(PyExc_ValueError, "extra attributes: at most 256 bytes");
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Responder *self = (Responder *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    struct nk_cfg *c = &self->cfg;
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->family = family;
    c->pktinfo = pktinfo ? 1 : 0;
    c->timeout_ms = timeout_ms;
    c->origin_port = (uint16_t)origin_port;
    c->extra_len = (uint16_t)extra_len;
    memcpy(c->extra, extra, (size_t)extra_len);
    self->bufs = NULL;
    self->slow = NULL;
    self->busy = 0;
    if (!take_addr("origin", origin, origin_len, family, c->origin)) {
        Py_DECREF(self);
        return NULL;
    }
    self->bufs = calloc(1, sizeof(struct nk_bufs));
    self->slow = malloc(NK_SLOW_CAP);
    if (self->bufs == NULL || self->slow == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Responder_dealloc(PyObject *obj) {
    Responder *self = (Responder *)obj;
    PyTypeObject *tp = Py_TYPE(obj);
    free(self->bufs);
    free(self->slow);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(obj);
    Py_DECREF(tp);
}

static PyObject *Responder_serve(PyObject *obj, PyObject *unused) {
    Responder *self = (Responder *)obj;
    (void)unused;
    if (self->busy)
        return PyErr_Format(PyExc_RuntimeError, "serve() is already running on this socket");
    self->busy = 1;
    long used;
    Py_BEGIN_ALLOW_THREADS
    used = nk_serve(&self->cfg, self->bufs, self->slow, NK_SLOW_CAP);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (used < 0) {
        errno = (int)-used;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBytes_FromStringAndSize((const char *)self->slow, used);
}

static PyObject *Responder_stop(PyObject *obj, PyObject *unused) {
    (void)unused;
    ((Responder *)obj)->cfg.stop = 1;
    Py_RETURN_NONE;
}

static PyObject *Responder_counts(PyObject *obj, PyObject *unused) {
    const struct nk_cfg *c = &((Responder *)obj)->cfg;
    (void)unused;
    return Py_BuildValue("(KKKKK)", (unsigned long long)c->fast, (unsigned long long)c->garbage,
                         (unsigned long long)c->ignored, (unsigned long long)c->dropped,
                         (unsigned long long)c->send_errors);
}

/* The reply serve() would send for one datagram, without a socket (tests compare it with
 * the pure-Python path byte for byte); None when serve() would not answer it itself. */
static PyObject *Responder_answer(PyObject *obj, PyObject *args) {
    const struct nk_cfg *c = &((Responder *)obj)->cfg;
    const char *data, *src, *local = NULL;
    Py_ssize_t n, src_len, local_len = 0;
    int port;
    if (!PyArg_ParseTuple(args, "y#y#i|z#", &data, &n, &src, &src_len, &port, &local, &local_len))
        return NULL;
    if (port < 0 || port > 65535)
        return PyErr_Format(PyExc_ValueError, "bad port %d", port);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    uint8_t addr[16], where[16];
    if (!take_addr("source", src, src_len, c->family, addr))
        return NULL;
    if (local != NULL) {
        if (!take_addr("local", local, local_len, c->family, where))
            return NULL;
    } else {
        memcpy(where, c->origin, 16);
    }
    if (c->family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        s->sin_port = htons((uint16_t)port);
        memcpy(&s->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons((uint16_t)port);
        memcpy(&s->sin6_addr, addr, 16);
    }
    if (n > NK_SLOT)
        Py_RETURN_NONE; /* serve() sees it truncated: garbage */
    int fp;
    if (classify((const uint8_t *)data, (size_t)n, &fp) != NK_FAST)
        Py_RETURN_NONE;
    uint8_t out[NK_OUT];
    size_t len = build(c, (const uint8_t *)data, fp, &ss, where, out);
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)len);
}

static PyMethodDef Responder_methods[] = {
    {"serve", Responder_serve, METH_NOARGS,
     "Serve the socket (GIL released) until there are slow-path records for Python (returned "
     "as bytes), timeout_ms pass without traffic or stop() is called (b''); OSError on a "
     "socket error."},
    {"stop", Responder_stop, METH_NOARGS, "Make serve() return within timeout_ms."},
    {"counts", Responder_counts, METH_NOARGS,
     "(fast, garbage, ignored, dropped, send_errors) so far."},
    {"answer", Responder_answer, METH_VARARGS,
     "answer(data, src_ip_bytes, src_port, local_ip_bytes=None): the reply serve() sends, or "
     "None."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Responder_slots[] = {
    {Py_tp_new, Responder_new},
    {Py_tp_dealloc, Responder_dealloc},
    {Py_tp_methods, Responder_methods},
    {Py_tp_doc, "Responder(fd, family, pktinfo, origin, origin_port, extra, timeout_ms=100): "
                "the Binding fast path of one UDP socket."},
    {0, NULL},
};

static PyType_Spec Responder_spec = {
    "natkit.server._stunfast.Responder", sizeof(Responder), 0, Py_TPFLAGS_DEFAULT, Responder_slots,
};

static PyObject *mod_classify(PyObject *mod, PyObject *arg) {
    (void)mod;
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &data, &n) < 0)
        return NULL;
    int fp;
    int what = classify((const uint8_t *)data, (size_t)n, &fp);
    return Py_BuildValue("(iO)", what, fp ? Py_True : Py_False);
}

static PyMethodDef module_methods[] = {
    {"classify", mod_classify, METH_O,
     "classify(data) -> (FAST|SLOW|GARBAGE|IGNORE, has a valid FINGERPRINT)"},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *mod) {
    crc_init();
    PyObject *type = PyType_FromSpec(&Responder_spec);
    if (type == NULL)
        return -1;
    if (PyModule_AddObject(mod, "Responder", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    if (PyModule_AddIntConstant(mod, "FAST", NK_FAST) < 0 ||
        PyModule_AddIntConstant(mod, "SLOW", NK_SLOW) < 0 ||
        PyModule_AddIntConstant(mod, "GARBAGE", NK_GARBAGE) < 0 ||
        PyModule_AddIntConstant(mod, "IGNORE", NK_IGNORE) < 0 ||
        PyModule_AddIntConstant(mod, "BATCH", NK_BATCH) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "natkit.server._stunfast",
    "The STUN responder's UDP Binding fast path (recvmmsg/sendmmsg, GIL released).", 0,
    module_methods, module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__stunfast(void) { return PyModuleDef_Init(&module_def); }
