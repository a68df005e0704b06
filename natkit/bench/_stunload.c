/*
 * natkit.bench._stunload: the load generator and the bare reflector of `natkit bench stun`.
 *
 * A CPython extension module (limited API) built at install time by setup.py. Each function
 * runs its loop in C with the GIL released; natkit/bench/stun.py runs each in its own process
 * pinned to a core (`python -m natkit.bench.loadgen stun-flood|stun-reflect ...`).
 *
 * flood(host, port, seconds, sockets, window): SOCKETS UDP sockets, each connected to the
 *   server, keep WINDOW plain Binding requests (20 bytes, no attribute) in flight each for
 *   SECONDS and count the Binding success responses to them. Batched so that the generator
 *   pays far less per request than the server: each refill of a socket's window leaves in one
 *   UDP GSO send (the kernel still delivers every request to the server as its own datagram;
 *   sendmmsg where the kernel has no GSO), responses are read with recvmmsg. A socket that
 *   waits for answers and has heard nothing for 10 ms lost some (UDP): its window is
 *   refilled, so a loss never shrinks the load for the rest of the run.
 *
 * reflect(host, port, max_seconds): the least a STUN server can do, as the ceiling of a
 *   server on one core with the same kernel interface as natkit's C path: recvmmsg, a
 *   header check, a success response with XOR-MAPPED-ADDRESS only, sendmmsg. Runs until
 *   max_seconds pass (or the process is killed).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define REQ 20
#define MAX_WINDOW 1024
#define GSO_SEGMENTS 64 /* the kernel's limit per GSO send on older kernels */
#define RX 64
#define COOKIE 0x2112A442u

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

static void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* host:port into a sockaddr (IPv4 or IPv6 literal); 0 when the host is not one. */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 1;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the generator */

/* Whether a 2-segment GSO send over loopback arrives as 2 datagrams here. */
#include "../server/_gso_probe.h"
static int gso_works(void) { return nk_gso_probe(); }

#define STALL 0.010 /* seconds without an answer after which a socket's window is refilled */

struct flood_sock {
    int fd;
    int inflight;
    double last; /* when it last received or was refilled after a stall */
    uint32_t seq;
    uint8_t out[MAX_WINDOW * REQ]; /* requests back to back: one GSO send */
};

struct flood {
    struct flood_sock *s;
    int n, window, gso;
    uint32_t tag; /* the first 4 bytes of every transaction id: our answers, not strays */
    long sent, responses, other, refills, send_errors;
    struct mmsghdr mm[MAX_WINDOW];
    struct iovec iov[MAX_WINDOW];
    uint8_t rbuf[RX][512];
    struct mmsghdr rmm[RX];
    struct iovec riov[RX];
};

/* Put `count` more requests in flight on socket i: new transaction ids, as few sends as
 * the kernel takes (one per GSO_SEGMENTS requests with GSO, one sendmmsg without). */
static void flood_fill(struct flood *F, int i, int count) {
    struct flood_sock *k = &F->s[i];
    if (count > F->window - k->inflight) count = F->window - k->inflight;
    if (count <= 0) return;
    for (int j = 0; j < count; j++) {
        uint8_t *r = k->out + (size_t)j * REQ;
        r[0] = 0x00; r[1] = 0x01; r[2] = 0x00; r[3] = 0x00;
        wr32(r + 4, COOKIE);
        wr32(r + 8, F->tag);
        wr32(r + 12, (uint32_t)i);
        wr32(r + 16, k->seq++);
    }
    int done = 0;
    while (done < count) {
        int m = 0, left = count - done;
        if (F->gso) {
            while (left > 0 && m < MAX_WINDOW) {
                int seg = left < GSO_SEGMENTS ? left : GSO_SEGMENTS;
                F->iov[m].iov_base = k->out + (size_t)(done + (count - done - left)) * REQ;
                F->iov[m].iov_len = (size_t)seg * REQ;
                memset(&F->mm[m].msg_hdr, 0, sizeof F->mm[m].msg_hdr);
                F->mm[m].msg_hdr.msg_iov = &F->iov[m];
                F->mm[m].msg_hdr.msg_iovlen = 1;
                F->mm[m].msg_len = (unsigned)seg; /* remembered: datagrams in this message */
                left -= seg;
                m++;
            }
        } else {
            for (; m < left && m < MAX_WINDOW; m++) {
                F->iov[m].iov_base = k->out + (size_t)(done + m) * REQ;
                F->iov[m].iov_len = REQ;
                memset(&F->mm[m].msg_hdr, 0, sizeof F->mm[m].msg_hdr);
                F->mm[m].msg_hdr.msg_iov = &F->iov[m];
                F->mm[m].msg_hdr.msg_iovlen = 1;
                F->mm[m].msg_len = 1;
            }
        }
        unsigned segs[MAX_WINDOW];
        for (int q = 0; q < m; q++) segs[q] = F->mm[q].msg_len;
        int off = 0;
        while (off < m) {
            int r = sendmmsg(k->fd, F->mm + off, (unsigned)(m - off), MSG_DONTWAIT);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { /* buffer full: these are lost, as a real client's would be */
                for (int q = off; q < m; q++) F->send_errors += segs[q];
                break;
            }
            for (int q = off; q < off + r; q++) {
                F->sent += segs[q];
                k->inflight += (int)segs[q];
            }
            off += r;
        }
        int total = 0;
        for (int q = 0; q < m; q++) total += (int)segs[q];
        done += total;
    }
}

/* Read what socket i has: count our Binding successes, refill as many. */
static void flood_read(struct flood *F, int i, double now) {
    struct flood_sock *k = &F->s[i];
    k->last = now;
    for (;;) {
        int r = recvmmsg(k->fd, F->rmm, RX, MSG_DONTWAIT, NULL);
        if (r <= 0) return;
        int good = 0;
        for (int j = 0; j < r; j++) {
            const uint8_t *p = F->rbuf[j];
            unsigned n = F->rmm[j].msg_len;
            if (n >= 20 && p[0] == 0x01 && p[1] == 0x01 && rd32(p + 4) == COOKIE &&
                rd32(p + 8) == F->tag && rd32(p + 12) == (uint32_t)i)
                good++;
            else
                F->other++;
        }
        F->responses += good;
        k->inflight -= r;
        if (k->inflight < 0) k->inflight = 0;
        flood_fill(F, i, r);
        if (r < RX) return;
    }
}

/* The whole run without the GIL; returns 0 or an errno (and what failed in *what). */
static int flood_run(struct flood *F, const struct sockaddr_storage *to, socklen_t tolen,
                     double seconds, double *elapsed, double *cpu, const char **what) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { *what = "epoll_create1"; return errno; }
    int big = 4 << 20;
    for (int i = 0; i < F->n; i++) {
        int fd = socket(to->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) { *what = "socket"; return errno; }
        F->s[i].fd = fd;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        if (connect(fd, (const struct sockaddr *)to, tolen) != 0) { *what = "connect"; return errno; }
        int seg = REQ; /* a send of k requests leaves as k datagrams (an int option) */
        if (F->gso && setsockopt(fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof seg) != 0) F->gso = 0;
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.u32 = (uint32_t)i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) { *what = "epoll_ctl"; return errno; }
    }
    for (int j = 0; j < RX; j++) {
        F->riov[j].iov_base = F->rbuf[j];
        F->riov[j].iov_len = sizeof F->rbuf[j];
        memset(&F->rmm[j].msg_hdr, 0, sizeof F->rmm[j].msg_hdr);
        F->rmm[j].msg_hdr.msg_iov = &F->riov[j];
        F->rmm[j].msg_hdr.msg_iovlen = 1;
    }
    double t0 = now_s(), c0 = cpu_s(), end = t0 + seconds, check = t0 + STALL;
    for (int i = 0; i < F->n; i++) {
        F->s[i].last = t0;
        flood_fill(F, i, F->window);
    }
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        if (t >= end) break;
        if (t >= check) { /* a socket silent for STALL lost requests or answers: refill it */
            for (int i = 0; i < F->n; i++) {
                struct flood_sock *k = &F->s[i];
                if (t - k->last >= STALL) {
                    k->inflight = 0;
                    k->last = t;
                    F->refills++;
                }
                flood_fill(F, i, F->window); /* also tops up after a failed send */
            }
            check = t + STALL;
        }
        int k = epoll_wait(ep, evs, 256, 10);
        if (k < 0 && errno != EINTR) { *what = "epoll_wait"; return errno; }
        if (k > 0) t = now_s();
        for (int e = 0; e < k; e++) flood_read(F, (int)evs[e].data.u32, t);
    }
    *elapsed = now_s() - t0;
    *cpu = cpu_s() - c0;
    close(ep);
    return 0;
}

static PyObject *mod_flood(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *names[] = {"host", "port", "seconds", "sockets", "window", NULL};
    (void)mod;
    const char *host;
    int port, sockets = 16, window = 32;
    double seconds = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "si|dii", names, &host, &port, &seconds, &sockets,
                                     &window))
        return NULL;
    struct sockaddr_storage to;
    socklen_t tolen;
    if (port < 1 || port > 65535 || !parse_addr(host, port, &to, &tolen))
        return PyErr_Format(PyExc_ValueError, "bad server address %s:%d", host, port);
    if (sockets < 1 || sockets > 1024 || window < 1 || window > MAX_WINDOW)
        return PyErr_Format(PyExc_ValueError, "sockets and window: 1-1024 each");
    if (!(seconds > 0 && seconds <= 3600))
        return PyErr_Format(PyExc_ValueError, "seconds: 0-3600");
    struct flood *F = calloc(1, sizeof *F);
    struct flood_sock *s = calloc((size_t)sockets, sizeof *s);
    if (F == NULL || s == NULL) {
        free(F);
        free(s);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < sockets; i++) s[i].fd = -1;
    F->s = s;
    F->n = sockets;
    F->window = window;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    F->tag = (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() << 16;
    double elapsed = 0, cpu = 0;
    const char *what = "";
    int err;
    Py_BEGIN_ALLOW_THREADS
    F->gso = gso_works();
    err = flood_run(F, &to, tolen, seconds, &elapsed, &cpu, &what);
    for (int i = 0; i < sockets; i++)
        if (s[i].fd >= 0) close(s[i].fd);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (err) {
        PyErr_Format(PyExc_OSError, "the STUN load generator: %s: %s", what, strerror(err));
    } else {
        result = Py_BuildValue(
            "{s:l,s:l,s:l,s:l,s:l,s:d,s:d,s:O}", "responses", F->responses, "other", F->other,
            "sent", F->sent, "refills", F->refills, "send_errors", F->send_errors, "seconds",
            elapsed, "cpu_seconds", cpu, "gso", F->gso ? Py_True : Py_False);
    }
    free(s);
    free(F);
    return result;
}

/* ---------------------------------------------------------------- the bare reflector */

struct reflector {
    uint8_t in[RX][512];
    uint8_t out[RX][64];
    struct sockaddr_storage from[RX];
    struct mmsghdr rmm[RX], smm[RX];
    struct iovec riov[RX], siov[RX];
};

/* The Binding success for a plain request: XOR-MAPPED-ADDRESS only; 0 when not a request. */
static size_t reflect_one(const uint8_t *p, unsigned n, const struct sockaddr_storage *from,
                          uint8_t *o) {
    if (n < 20 || p[0] != 0x00 || p[1] != 0x01 || rd32(p + 4) != COOKIE) return 0;
    if ((unsigned)(p[2] << 8 | p[3]) + 20 != n) return 0;
    o[0] = 0x01; o[1] = 0x01;
    memcpy(o + 4, p + 4, 16);
    uint8_t *a = o + 20;
    a[0] = 0x00; a[1] = 0x20; a[4] = 0;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)from;
        const uint8_t *ip = (const uint8_t *)&s->sin_addr;
        uint16_t port = (uint16_t)(ntohs(s->sin_port) ^ 0x2112);
        a[2] = 0; a[3] = 8; a[5] = 1;
        a[6] = (uint8_t)(port >> 8); a[7] = (uint8_t)port;
        for (int i = 0; i < 4; i++) a[8 + i] = ip[i] ^ p[4 + i];
        o[2] = 0; o[3] = 12;
        return 32;
    }
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)from;
    const uint8_t *ip = (const uint8_t *)&s->sin6_addr;
    uint16_t port = (uint16_t)(ntohs(s->sin6_port) ^ 0x2112);
    a[2] = 0; a[3] = 20; a[5] = 2;
    a[6] = (uint8_t)(port >> 8); a[7] = (uint8_t)port;
    for (int i = 0; i < 16; i++) a[8 + i] = ip[i] ^ p[4 + i];
    o[2] = 0; o[3] = 24;
    return 44;
}

static long reflect_run(struct reflector *R, int fd, double max_seconds, int *err) {
    long served = 0;
    double end = now_s() + max_seconds;
    for (int i = 0; i < RX; i++) {
        R->riov[i].iov_base = R->in[i];
        R->riov[i].iov_len = sizeof R->in[i];
    }
    while (now_s() < end) {
        for (int i = 0; i < RX; i++) {
            memset(&R->rmm[i].msg_hdr, 0, sizeof R->rmm[i].msg_hdr);
            R->rmm[i].msg_hdr.msg_iov = &R->riov[i];
            R->rmm[i].msg_hdr.msg_iovlen = 1;
            R->rmm[i].msg_hdr.msg_name = &R->from[i];
            R->rmm[i].msg_hdr.msg_namelen = sizeof R->from[i];
        }
        int n = recvmmsg(fd, R->rmm, RX, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) { *err = errno; return served; }
            struct pollfd p = {fd, POLLIN, 0};
            poll(&p, 1, 100);
            continue;
        }
        int k = 0;
        for (int i = 0; i < n; i++) {
            size_t len = reflect_one(R->in[i], R->rmm[i].msg_len, &R->from[i], R->out[k]);
            if (!len) continue;
            R->siov[k].iov_base = R->out[k];
            R->siov[k].iov_len = len;
            memset(&R->smm[k].msg_hdr, 0, sizeof R->smm[k].msg_hdr);
            R->smm[k].msg_hdr.msg_iov = &R->siov[k];
            R->smm[k].msg_hdr.msg_iovlen = 1;
            R->smm[k].msg_hdr.msg_name = &R->from[i];
            R->smm[k].msg_hdr.msg_namelen = R->rmm[i].msg_hdr.msg_namelen;
            k++;
        }
        for (int off = 0; off < k;) {
            int r = sendmmsg(fd, R->smm + off, (unsigned)(k - off), MSG_DONTWAIT);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { off++; continue; } /* a full buffer drops, as UDP would */
            off += r;
            served += r;
        }
    }
    return served;
}

static PyObject *mod_reflect(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *names[] = {"host", "port", "max_seconds", NULL};
    (void)mod;
    const char *host;
    int port;
    double max_seconds = 600;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "si|d", names, &host, &port, &max_seconds))
        return NULL;
    struct sockaddr_storage at;
    socklen_t atlen;
    if (port < 0 || port > 65535 || !parse_addr(host, port, &at, &atlen))
        return PyErr_Format(PyExc_ValueError, "bad address %s:%d", host, port);
    if (!(max_seconds > 0 && max_seconds <= 86400))
        return PyErr_Format(PyExc_ValueError, "max_seconds: 0-86400");
    int fd = socket(at.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int big = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (bind(fd, (struct sockaddr *)&at, atlen) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(fd);
        return NULL;
    }
    struct reflector *R = calloc(1, sizeof *R);
    if (R == NULL) {
        close(fd);
        return PyErr_NoMemory();
    }
    long served;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    served = reflect_run(R, fd, max_seconds, &err);
    Py_END_ALLOW_THREADS
    close(fd);
    free(R);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(served);
}

static PyMethodDef module_methods[] = {
    {"flood", (PyCFunction)(void (*)(void))mod_flood, METH_VARARGS | METH_KEYWORDS,
     "flood(host, port, seconds=5, sockets=16, window=32) -> counts (GIL released)."},
    {"reflect", (PyCFunction)(void (*)(void))mod_reflect, METH_VARARGS | METH_KEYWORDS,
     "reflect(host, port, max_seconds=600) -> responses sent (GIL released)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "natkit.bench._stunload",
    "The STUN Binding load generator and bare C reflector of `natkit bench stun`.", 0,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__stunload(void) { return PyModuleDef_Init(&module_def); }
