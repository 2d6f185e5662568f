/* rendezvous_test.c — the TCP rendezvous of runtime/dist/rendezvous.c on loopback: rank 0 hands
 * 128 bytes to three other processes; a job whose third rank never comes fails on rank 0 within
 * its timeout with a message saying so; a rank that cannot reach rank 0 fails likewise. */
#define _POSIX_C_SOURCE 200809L
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rendezvous.h"

static int passed, failed;
static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    if (ok) passed++;
    else failed++;
}

static void free_port(char *port, size_t n) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    snprintf(port, n, "%d", (int)ntohs(a.sin_port));
    close(fd);
}

static void fill(unsigned char *b, int rank) {
    for (int i = 0; i < 128; i++) b[i] = rank == 0 ? (unsigned char)(i * 7 + 3) : 0;
}

/* A child rank: receives and checks the bytes; exit status 0 when they are rank 0's. */
static pid_t spawn(int rank, int size, const char *port, double timeout) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    unsigned char b[128], want[128];
    char err[256];
    fill(b, rank);
    fill(want, 0);
    int rc = flx_rendezvous_bytes(b, sizeof b, rank, size, "127.0.0.1", port, timeout, err, sizeof err);
    _exit(rc == 0 && memcmp(b, want, sizeof b) == 0 ? 0 : 1);
}

static int child_ok(pid_t pid) {
    int st = 0;
    return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(void) {
    char port[16], err[256];
    unsigned char b[128];
    /* four ranks */
    free_port(port, sizeof port);
    pid_t kids[3];
    for (int r = 1; r <= 3; r++) kids[r - 1] = spawn(r, 4, port, 20.0);
    fill(b, 0);
    int rc = flx_rendezvous_bytes(b, sizeof b, 0, 4, NULL, port, 20.0, err, sizeof err);
    check(rc == 0, "rank 0 served three ranks");
    for (int r = 1; r <= 3; r++) check(child_ok(kids[r - 1]), "a rank received rank 0's bytes");
    /* a job of three whose rank 2 never comes: rank 0 gives up after its timeout */
    free_port(port, sizeof port);
    pid_t one = spawn(1, 3, port, 20.0);
    rc = flx_rendezvous_bytes(b, sizeof b, 0, 3, NULL, port, 1.5, err, sizeof err);
    check(rc == FLX_RENDEZVOUS_TIMEOUT && strstr(err, "only 2 of 3") != NULL, "rank 0 reports the missing rank");
    if (rc != 0) printf("  message: %s\n", err);
    check(child_ok(one), "the rank that came still got the bytes");
    /* nobody listens: a rank gives up after its timeout */
    free_port(port, sizeof port);
    rc = flx_rendezvous_bytes(b, sizeof b, 1, 2, "127.0.0.1", port, 0.5, err, sizeof err);
    check(rc == FLX_RENDEZVOUS_TIMEOUT && strstr(err, "could not get the id") != NULL,
          "a rank without rank 0 times out");
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
