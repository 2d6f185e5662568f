/* ops_shape.c — placeholder registration (filled in by the shape family work). */
#include "internal.h"

void flx_ops_register_shape(flx_op_def *table) { (void)table; }
