/* rendezvous.c — hands a few bytes (NCCL's unique id) from rank 0 to every rank over TCP, for
 * jobs started torchrun-style (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) without MPI. Rank 0
 * listens on MASTER_PORT and writes the bytes to each rank that connects; the others connect
 * (retrying while rank 0 starts) and read them. Everything is bounded by a timeout, so a rank that
 * never comes is an error, not a hang. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rendezvous.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int io_all(int fd, void *buf, size_t n, bool rd, double deadline) {
    char *p = (char *)buf;
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = rd ? POLLIN : POLLOUT};
        int ms = (int)((deadline - now_s()) * 1000.0);
        if (ms <= 0 || poll(&pfd, 1, ms) <= 0) return -1;
        ssize_t k = rd ? read(fd, p, n) : write(fd, p, n);
        if (k <= 0) {
            if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int flx_rendezvous_bytes(void *buf, size_t n, int rank, int size, const char *addr,
                         const char *port, double timeout_s, char *err, size_t err_len) {
    double deadline = now_s() + timeout_s;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (rank == 0) hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(rank == 0 ? NULL : addr, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, err_len, "cannot resolve %s:%s (%s)", addr ? addr : "*", port, gai_strerror(gai));
        return -1;
    }
    int rc = -1;
    if (rank == 0) {
        int ls = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
        int one = 1;
        if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            bind(ls, res->ai_addr, res->ai_addrlen) != 0 || listen(ls, size) != 0) {
            snprintf(err, err_len, "rank 0 cannot listen on port %s (%s)", port, strerror(errno));
        } else {
            int served = 0;
            while (served < size - 1) {
                struct pollfd pfd = {.fd = ls, .events = POLLIN};
                int ms = (int)((deadline - now_s()) * 1000.0);
                if (ms <= 0 || poll(&pfd, 1, ms) <= 0) break;
                int fd = accept(ls, NULL, NULL);
                if (fd < 0) continue;
                if (io_all(fd, buf, n, false, deadline) == 0) served++;
                close(fd);
            }
            if (served == size - 1) {
                rc = 0;
            } else {
                rc = FLX_RENDEZVOUS_TIMEOUT;
                snprintf(err, err_len, "only %d of %d ranks connected to rank 0 within %.0f s", served + 1,
                         size, timeout_s);
            }
        }
        if (ls >= 0) close(ls);
    } else {
        while (rc != 0 && now_s() < deadline) {
            int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
            if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
                rc = io_all(fd, buf, n, true, deadline);
            } else {
                struct timespec pause = {0, 50 * 1000 * 1000}; /* rank 0 may not listen yet */
                nanosleep(&pause, NULL);
            }
            if (fd >= 0) close(fd);
        }
        if (rc != 0) {
            rc = FLX_RENDEZVOUS_TIMEOUT;
            snprintf(err, err_len, "rank %d could not get the id from %s:%s within %.0f s", rank,
                     addr, port, timeout_s);
        }
    }
    freeaddrinfo(res);
    return rc;
}
