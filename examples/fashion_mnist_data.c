/* fashion_mnist_data.c — Fashion-MNIST's gzipped IDX files (Debian's dataset-fashion-mnist),
 * read through zlib with the magic numbers and sizes checked. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fashion_mnist.h"

/* ---- IDX files through zlib ----------------------------------------------------------------- */
static int read_exact(gzFile f, void *dst, size_t n) {
    unsigned char *p = (unsigned char *)dst;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int r = gzread(f, p, chunk);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static uint32_t be32(const unsigned char *b) {
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

/* Reads an IDX file: magic 0x00000803 (images, n x 28 x 28) or 0x00000801 (labels, n). */
static unsigned char *read_idx(const char *path, uint32_t want_magic, int64_t *count) {
    gzFile f = gzopen(path, "rb");
    if (!f) {
        fprintf(stderr,
                "fashion_mnist: cannot open %s: %s\n"
                "  install the dataset with: apt-get install dataset-fashion-mnist (as root; tools/run "
                "does it),\n  or point --data (or FLX_FASHION_MNIST_DIR) at a directory holding the "
                "four *-ubyte.gz files\n",
                path, strerror(errno));
        return NULL;
    }
    unsigned char hdr[16];
    int ndim = want_magic == 0x803 ? 3 : 1;
    unsigned char *data = NULL;
    if (read_exact(f, hdr, 4 + 4 * (size_t)ndim) != 0) {
        fprintf(stderr, "fashion_mnist: %s: truncated or not gzip/IDX (header unreadable)\n", path);
        goto out;
    }
    uint32_t magic = be32(hdr);
    if (magic != want_magic) {
        fprintf(stderr, "fashion_mnist: %s: bad IDX magic 0x%08x (expected 0x%08x)\n", path,
                (unsigned)magic, (unsigned)want_magic);
        goto out;
    }
    uint32_t n = be32(hdr + 4);
    if (n == 0 || n > 1000000) {
        fprintf(stderr, "fashion_mnist: %s: implausible item count %u\n", path, (unsigned)n);
        goto out;
    }
    if (ndim == 3 && (be32(hdr + 8) != 28 || be32(hdr + 12) != 28)) {
        fprintf(stderr, "fashion_mnist: %s: images are %ux%u, expected 28x28\n", path,
                (unsigned)be32(hdr + 8), (unsigned)be32(hdr + 12));
        goto out;
    }
    size_t bytes = (size_t)n * (ndim == 3 ? IMG : 1);
    data = (unsigned char *)malloc(bytes);
    if (!data) {
        fprintf(stderr, "fashion_mnist: out of memory reading %s\n", path);
        goto out;
    }
    if (read_exact(f, data, bytes) != 0) {
        fprintf(stderr, "fashion_mnist: %s: truncated (expected %zu data bytes)\n", path, bytes);
        free(data);
        data = NULL;
        goto out;
    }
    unsigned char extra;
    if (gzread(f, &extra, 1) != 0) {
        fprintf(stderr, "fashion_mnist: %s: unexpected bytes after the data\n", path);
        free(data);
        data = NULL;
        goto out;
    }
    *count = n;
out:
    gzclose(f);
    return data;
}

int fm_load_split(const char *dir, const char *prefix, int64_t limit, dataset *ds) {
    char pi[4096], pl[4096];
    snprintf(pi, sizeof pi, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(pl, sizeof pl, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    int64_t ni = 0, nl = 0;
    unsigned char *img = read_idx(pi, 0x803, &ni);
    if (!img) return 1;
    unsigned char *lab = read_idx(pl, 0x801, &nl);
    if (!lab) {
        free(img);
        return 1;
    }
    if (ni != nl) {
        fprintf(stderr, "fashion_mnist: %s has %lld images but %s has %lld labels\n", pi,
                (long long)ni, pl, (long long)nl);
        free(img);
        free(lab);
        return 1;
    }
    ds->n = limit > 0 && limit < ni ? limit : ni;
    ds->x = (float *)malloc((size_t)ds->n * IMG * sizeof(float));
    ds->y = (int64_t *)malloc((size_t)ds->n * sizeof(int64_t));
    if (!ds->x || !ds->y) {
        fprintf(stderr, "fashion_mnist: out of memory\n");
        free(img);
        free(lab);
        return 1;
    }
    for (int64_t i = 0; i < ds->n; i++) {
        if (lab[i] >= N_CLASSES) {
            fprintf(stderr, "fashion_mnist: %s: label %d of item %lld is not in [0, 10)\n", pl,
                    (int)lab[i], (long long)i);
            free(img);
            free(lab);
            return 1;
        }
        ds->y[i] = lab[i];
    }
    /* Fashion-MNIST's mean and standard deviation of pixel values in [0, 1]. */
    for (int64_t i = 0; i < ds->n * IMG; i++) ds->x[i] = ((float)img[i] / 255.0f - 0.2860f) / 0.3530f;
    free(img);
    free(lab);
    return 0;
}
