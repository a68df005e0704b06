/*
 * The TURN relay's control fast path (natkit/server/_turnctl.c), compiled into the
 * natkit.server._turnfast extension: requests the C thread answers itself, with the same
 * bytes the Python engine (natkit/turn/engine.py) would send. Python configures it and stays
 * the authority: whatever this file does not recognise exactly goes to Python unchanged.
 */
#ifndef NATKIT_TURNCTL_H
#define NATKIT_TURNCTL_H

#include <stddef.h>
#include <stdint.h>

#define NK_CTL_REPLY 512 /* the longest reply this path builds (else: Python answers) */

struct nk_ctl;

struct nk_ctl *nk_ctl_new(void);
void nk_ctl_free(struct nk_ctl *t);

/*
 * Configure the 401 challenge: the nonce secret and lifetime and the nonce's fixed prefix
 * (natkit.turn.auth.NonceIssuer's scheme), the challenge's attributes before NONCE (ERROR-CODE,
 * REALM) and after it (PASSWORD-ALGORITHMS, SOFTWARE) as the engine encodes them, the budget
 * cap (0: error responses are not budgeted) and the relay's own transport addresses
 * (records of family(1) ip(16) min_port(2) max_port(2), host order ports): requests from
 * them are Python's. Returns 0, or -1 when a part is too long.
 */
int nk_ctl_configure(struct nk_ctl *t, const uint8_t *secret, size_t secret_len, double lifetime,
                     const uint8_t *prefix, size_t prefix_len, const uint8_t *pre, size_t pre_len,
                     const uint8_t *post, size_t post_len, unsigned budget_cap,
                     const uint8_t *own, size_t own_len);

/*
 * A request d (n bytes) from a client at (family, ip, port) on a UDP listener: > 0 the reply's
 * length (written to reply, NK_CTL_REPLY bytes), 0 Python's to answer (an Allocate this path
 * would serve but for a spare relay socket too: that client stays Python's, as any client
 * whose Allocate Python took, for CTL_HANDED_S).
 */
#define NK_CTL_USER_MAX 256 /* the longest USERNAME this path serves */

/* An allocation this path made (an authenticated Allocate): Python's engine adopts it. */
struct nk_ctl_made {
    int32_t relay_fd; /* -1: none made */
    uint32_t lifetime;
    uint8_t tid[12];
    uint16_t user_len, resp_len;
    uint8_t user[NK_CTL_USER_MAX];
};
#define NK_CTL_MADE_HEAD 24 /* relay_fd .. resp_len as Python reads them (=iI12sHH) */

/*
 * has_alloc: the client already has an allocation (or the table cannot tell): an Allocate
 * is Python's. made->relay_fd >= 0 when the reply is an Allocate success this path made.
 */
int nk_ctl_request(struct nk_ctl *t, uint8_t family, const uint8_t ip[16], uint16_t port,
                   const uint8_t *d, uint32_t n, double now, int has_alloc, uint8_t *reply,
                   struct nk_ctl_made *made);

/*
 * Configure authenticated Allocates: the realm, the static users (records of name length
 * (2, host order), name, long-term key (16)), the lifetimes the engine grants (default and
 * max). Without it (or with no user) every authenticated request is Python's. Returns 0 or -1.
 */
int nk_ctl_allocate_config(struct nk_ctl *t, const uint8_t *realm, size_t realm_len,
                           const uint8_t *users, size_t users_len, uint32_t default_lifetime,
                           uint32_t max_lifetime);

/* A bound, watched IPv4 relay socket an Allocate may take (advertised address ip:port). */
int nk_ctl_add_spare(struct nk_ctl *t, int fd, const uint8_t ip[4], uint16_t port);
/* How many spares are left. */
unsigned nk_ctl_spares(const struct nk_ctl *t);
/* Give the spares back (up to max fds): the caller closes them. Returns how many. */
unsigned nk_ctl_take_spares(struct nk_ctl *t, int *fds, unsigned max);

/* A request from this IP verified (Python's engine credits its error budget): one reply of
 * the C path's budget for it, up to the cap. */
void nk_ctl_credit(struct nk_ctl *t, uint8_t family, const uint8_t ip[16]);

/* The nonce this path issues to ip at now (tests compare it with the engine's). */
int nk_ctl_nonce(struct nk_ctl *t, uint8_t family, const uint8_t ip[16], double now, char *out);

#define NK_CTL_NSTATS 5
/* challenges sent, requests passed to Python for want of budget, requests passed otherwise,
 * allocations made, authenticated Allocates passed to Python for want of a spare relay socket */
void nk_ctl_stats(const struct nk_ctl *t, uint64_t out[NK_CTL_NSTATS]);

#endif
