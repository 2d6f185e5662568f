/* fashion_mnist.h — the parts of the Fashion-MNIST example (examples/fashion_mnist.c) that are
 * not training: reading the IDX files (fashion_mnist_data.c) and drawing the curves as SVG
 * (fashion_mnist_plot.c). */
#ifndef FASHION_MNIST_H
#define FASHION_MNIST_H

#include <stdint.h>

#define IMG 784
#define N_CLASSES 10

/* A split held on the host: n images of 784 normalised pixels and n labels in [0, 10). */
typedef struct dataset {
    int64_t n;
    float *x;
    int64_t *y;
} dataset;

/* Reads <dir>/<prefix>-images-idx3-ubyte.gz and -labels-idx1-ubyte.gz (at most limit items when
 * limit > 0). Returns 0, or 1 after printing what is wrong. */
int fm_load_split(const char *dir, const char *prefix, int64_t limit, dataset *ds);

/* Training history: one row per recorded point, HIST_COLS values each. Train values are means
 * over the steps since the previous row; test values are NaN where the test set was not
 * evaluated. */
enum { H_EPOCH, H_TRAIN_LOSS, H_TRAIN_ACC, H_TEST_LOSS, H_TEST_ACC, H_SECONDS, HIST_COLS };

/* Writes the loss and accuracy curves (train and test against epochs) as an SVG file with the
 * given title. Returns 0, or -1 when the file cannot be written. */
int fm_write_svg(const char *path, const char *title, const double *hist, int rows);

#endif
