/*
 * Whether UDP GSO works here: a 2-segment send (UDP_SEGMENT, Linux >= 4.18) over loopback
 * must arrive as 2 datagrams. Shared by the C modules that send with GSO (the TURN relay's
 * data path, natkit/server/_turnfast.c, and the benchmarks' load generators,
 * natkit/bench/_turnload.c and _stunload.c); each includes it once, after its system headers.
 */
#ifndef NK_GSO_PROBE_H
#define NK_GSO_PROBE_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

static int nk_gso_probe(void) {
    int tx = socket(AF_INET, SOCK_DGRAM, 0), rx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int got = 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (tx >= 0 && rx >= 0 && bind(rx, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(rx, (struct sockaddr *)&a, &al) == 0) {
        uint8_t two[16] = {0};
        struct iovec v = {two, sizeof(two)};
        union {
            char b[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } ctl;
        struct msghdr h;
        memset(&h, 0, sizeof(h));
        h.msg_name = &a;
        h.msg_namelen = sizeof(a);
        h.msg_iov = &v;
        h.msg_iovlen = 1;
        h.msg_control = ctl.b;
        h.msg_controllen = sizeof(ctl.b);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&h);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = 8;
        memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
        if (sendmsg(tx, &h, 0) == (ssize_t)sizeof(two)) {
            /* loopback delivers before sendmsg returns, but a busy machine may defer it */
            struct pollfd p = {rx, POLLIN, 0};
            for (int i = 0; i < 2 && poll(&p, 1, 200) > 0; i++)
                if (recv(rx, two, sizeof(two), 0) == 8)
                    got++;
        }
    }
    if (tx >= 0)
        close(tx);
    if (rx >= 0)
        close(rx);
    return got == 2;
}

#endif
