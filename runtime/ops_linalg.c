/* ops_linalg.c — placeholder registration (filled in by the linalg family work). */
#include "internal.h"

void flx_ops_register_linalg(flx_op_def *table) { (void)table; }
