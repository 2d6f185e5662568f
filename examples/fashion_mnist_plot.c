/* fashion_mnist_plot.c — the training curves as an SVG file: two panels (loss, accuracy), each
 * with train and test curves against epochs, a title, axis labels, "nice" ticks (1, 2, 5 x 10^k)
 * and a legend. SVG is text, so labels cost nothing, and every browser shows it. */
#include <math.h>
#include <stdio.h>

#include "fashion_mnist.h"

#define W 960
#define H 440
#define PANEL_W 370
#define PANEL_H 300
#define TOP 70

static const char *const TRAIN_COLOR = "#1f77b4", *const TEST_COLOR = "#ff7f0e";

/* A tick step of 1, 2 or 5 x 10^k giving about `want` intervals over [lo, hi]. */
static double nice_step(double lo, double hi, int want) {
    double raw = (hi - lo) / want, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

/* Decimals enough to tell ticks `step` apart. */
static int decimals(double step) {
    int d = (int)ceil(-log10(step) - 1e-9);
    return d < 0 ? 0 : d > 6 ? 6 : d;
}

typedef struct axis {
    double lo, hi, step;
} axis;

/* Range of the finite values of columns c0 and c1, widened to whole ticks. */
static axis y_axis(const double *hist, int rows, int c0, int c1) {
    double lo = INFINITY, hi = -INFINITY;
    const int cols[2] = {c0, c1};
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < 2; k++) {
            double v = hist[r * HIST_COLS + cols[k]];
            if (isfinite(v)) {
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        }
    if (!(lo <= hi)) lo = 0, hi = 1;
    if (hi - lo < 1e-6) lo -= 0.01, hi += 0.01;
    axis a;
    a.step = nice_step(lo, hi, 5);
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    return a;
}

static double px(double x, axis ax, int x0) { return x0 + (x - ax.lo) / (ax.hi - ax.lo) * PANEL_W; }
static double py(double y, axis ay) { return TOP + PANEL_H - (y - ay.lo) / (ay.hi - ay.lo) * PANEL_H; }

/* One series: a line through its finite points, and a marker on each when they are few. */
static void series(FILE *f, const double *hist, int rows, int col, axis ax, axis ay, int x0,
                   const char *color, int dashed) {
    int n = 0;
    for (int r = 0; r < rows; r++) n += isfinite(hist[r * HIST_COLS + col]) != 0;
    if (n == 0) return;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", color,
            dashed ? " stroke-dasharray=\"6 3\"" : "");
    for (int r = 0; r < rows; r++) {
        double v = hist[r * HIST_COLS + col];
        if (isfinite(v))
            fprintf(f, "%.1f,%.1f ", px(hist[r * HIST_COLS + H_EPOCH], ax, x0), py(v, ay));
    }
    fprintf(f, "\"/>\n");
    if (n <= 40)
        for (int r = 0; r < rows; r++) {
            double v = hist[r * HIST_COLS + col];
            if (isfinite(v))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n",
                        px(hist[r * HIST_COLS + H_EPOCH], ax, x0), py(v, ay), color);
        }
}

static void panel(FILE *f, const double *hist, int rows, int x0, const char *name, int c_train,
                  int c_test, axis ax) {
    axis ay = y_axis(hist, rows, c_train, c_test);
    int dx = decimals(ax.step), dy = decimals(ay.step);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n",
            x0 + PANEL_W / 2, TOP - 12, name);
    /* grid and ticks */
    for (double v = ay.lo; v <= ay.hi + ay.step / 2; v += ay.step) {
        double y = py(v, ay);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n", x0, y,
                x0 + PANEL_W, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\">%.*f</text>\n",
                x0 - 6, y + 4, dy, v);
    }
    for (double v = ax.lo; v <= ax.hi + ax.step / 2; v += ax.step) {
        double x = px(v, ax, x0);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e5e5e5\"/>\n", x, TOP,
                x, TOP + PANEL_H);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%.*f</text>\n",
                x, TOP + PANEL_H + 16, dx, v);
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n",
            x0, TOP, PANEL_W, PANEL_H);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">epoch</text>\n",
            x0 + PANEL_W / 2, TOP + PANEL_H + 36);
    fprintf(f,
            "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\" "
            "transform=\"rotate(-90 %d %d)\">%s</text>\n",
            x0 - 52, TOP + PANEL_H / 2, x0 - 52, TOP + PANEL_H / 2,
            c_train == H_TRAIN_LOSS ? "cross-entropy loss" : "accuracy");
    series(f, hist, rows, c_train, ax, ay, x0, TRAIN_COLOR, 0);
    series(f, hist, rows, c_test, ax, ay, x0, TEST_COLOR, 1);
    /* legend: top right for the loss (it falls), bottom right for the accuracy (it rises) */
    int lx = x0 + PANEL_W - 110, ly = c_train == H_TRAIN_LOSS ? TOP + 12 : TOP + PANEL_H - 46;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"100\" height=\"40\" fill=\"white\" stroke=\"#999\"/>\n",
            lx, ly);
    const char *labels[2] = {"train", "test"}, *colors[2] = {TRAIN_COLOR, TEST_COLOR};
    for (int k = 0; k < 2; k++) {
        int y = ly + 13 + 16 * k;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/>\n",
                lx + 8, y, lx + 36, y, colors[k], k ? " stroke-dasharray=\"6 3\"" : "");
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\">%s</text>\n", lx + 44, y + 4, labels[k]);
    }
}

/* Writes s with the five XML special characters escaped. */
static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default: fputc(*s, f);
        }
    }
}

int fm_write_svg(const char *path, const char *title, const double *hist, int rows) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    double last = 0;
    for (int r = 0; r < rows; r++)
        last = hist[r * HIST_COLS + H_EPOCH] > last ? hist[r * HIST_COLS + H_EPOCH] : last;
    axis ax;
    ax.lo = 0;
    ax.step = nice_step(0, last > 0 ? last : 1, last >= 4 ? 5 : 4);
    ax.hi = ceil((last > 0 ? last : 1) / ax.step - 1e-9) * ax.step;
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"%d\" y=\"28\" font-size=\"18\" text-anchor=\"middle\">",
            W, H, W, H, W / 2);
    xml_text(f, title);
    fprintf(f, "</text>\n");
    panel(f, hist, rows, 90, "Loss", H_TRAIN_LOSS, H_TEST_LOSS, ax);
    panel(f, hist, rows, 90 + PANEL_W + 110, "Accuracy", H_TRAIN_ACC, H_TEST_ACC, ax);
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}
