/*
 * status.c - fastnorm_status_string: one short, lower-case phrase per status code, for
 * error messages ("fastnorm_norm: bad shape ...").  Never NULL.
 */
#include "fastnorm/fastnorm.h"

const char *fastnorm_status_string(fastnorm_status_t status) {
    switch (status) {
    case FASTNORM_OK: return "ok";
    case FASTNORM_ERR_NULL_POINTER: return "a required pointer is NULL";
    case FASTNORM_ERR_BAD_SHAPE: return "bad shape (a zero or overflowing size, or a shape the operation does not support)";
    case FASTNORM_ERR_BAD_STRIDE: return "bad stride";
    case FASTNORM_ERR_BAD_DTYPE: return "unsupported dtype";
    case FASTNORM_ERR_NO_MEMORY: return "out of memory for scratch space";
    case FASTNORM_ERR_ISA_UNAVAILABLE: return "kernel family not compiled in or not supported by this CPU";
    case FASTNORM_ERR_BAD_VALUE: return "bad argument value";
    }
    return "unknown fastnorm status";
}
