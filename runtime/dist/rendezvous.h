/* rendezvous.h — a TCP exchange of a few bytes from rank 0 to every rank (see rendezvous.c).
 * defines: flx_rendezvous_bytes. Plain C with no runtime dependency, so a test can build it alone. */
#ifndef FLX_RENDEZVOUS_H
#define FLX_RENDEZVOUS_H

#include <stdbool.h>
#include <stddef.h>

/* Rank 0 sends buf[0..n) to ranks 1..size-1, which receive it into buf. 0 on success; with a
 * message in err, FLX_RENDEZVOUS_TIMEOUT when timeout_s ran out before every rank was served,
 * -1 on another failure (resolving the address, listening). */
#define FLX_RENDEZVOUS_TIMEOUT (-2)
int flx_rendezvous_bytes(void *buf, size_t n, int rank, int size, const char *addr,
                         const char *port, double timeout_s, char *err, size_t err_len);

#endif
