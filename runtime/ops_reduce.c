/* ops_reduce.c — placeholder registration (filled in by the reduce family work). */
#include "internal.h"

void flx_ops_register_reduce(flx_op_def *table) { (void)table; }
