/* op_table.c — the op table: one row per op (name, exec, VJP rule, JVP rule, flags), filled by
 * each family's registration function once per process. */
#include <stdio.h>
#include <threads.h>

#include "internal.h"

static flx_op_def g_table[FLX_OP_COUNT];
static once_flag g_once = ONCE_FLAG_INIT;

static void table_init(void) {
    flx_ops_register_creation(g_table);
    flx_ops_register_unary(g_table);
    flx_ops_register_binary(g_table);
    flx_ops_register_reduce(g_table);
    flx_ops_register_shape(g_table);
    flx_ops_register_linalg(g_table);
    flx_ops_register_autodiff(g_table);
    flx_ops_register_interop(g_table);
    flx_ops_register_conv(g_table); /* nn sliding windows */
    flx_ops_register_lu(g_table); /* LU family: det, solve, inv */
    flx_ops_register_softmax(g_table); /* softmax family */
    flx_ops_register_expm(g_table); /* expm */
    flx_ops_register_batch_norm(g_table); /* batch norm (training) */
    flx_ops_register_eigh(g_table); /* eigh */
    flx_ops_register_attention(g_table); /* attention */
    flx_ops_register_collective(g_table);
    for (int i = 0; i < FLX_OP_COUNT; i++)
        if (!g_table[i].name) g_table[i].name = "unregistered-op";
}

const flx_op_def *flx_op_get(flx_op op) {
    call_once(&g_once, table_init);
    return &g_table[op];
}
