/*
 * fluxion._fast: the hot path of the Python bindings in C, against CPython's limited API
 * (Py_LIMITED_API 0x03090000: one abi3 module for every Python >= 3.9).
 *
 * It holds no link to libfluxion: fluxion/_lib.py opens the library with ctypes and
 * fluxion/_core.py hands the addresses of the few C functions used here to bind(), so the module
 * and the ctypes layer always call the same library instance, and the module builds with the
 * Python headers alone.
 *
 * What it provides:
 *   - TensorBase: the handle type (one pointer) that fluxion.Tensor subclasses. Its dealloc
 *     releases the C reference; its number and comparison slots call the C op directly when both
 *     operands are tensors (or a float tensor and a Python float/int for + - *), and otherwise
 *     call the Python fallback registered for the op (scalars of other dtypes, numpy values,
 *     tensors made inside C callbacks, which need a reference of their own).
 *   - unary_fn / binary_fn: module-level op functions (fluxion.exp, fluxion.add, ...) whose C
 *     function pointer travels in the function object itself.
 * Errors: a NULL from the C library calls the registered Python raise function, which turns
 * the thread's C error into the right Python exception.
 */
#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef void *(*flx_unary_t)(void *);
typedef void *(*flx_binary_t)(void *, void *);
typedef void *(*flx_scalar_t)(void *, double);
typedef void *(*flx_affine_t)(void *, double, double);
typedef void (*flx_release_t)(void *);
typedef void (*flx_void_t)(void);

enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_MATMUL, OP_POW, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT,
       OP_GE, OP_NEG, OP_ABS, N_OPS };
static const char *const op_names[N_OPS] = {"add", "sub", "mul", "div", "matmul", "pow", "eq",
                                            "ne", "lt", "le", "gt", "ge", "neg", "abs"};

static struct {
    void *op[N_OPS];
    flx_scalar_t add_scalar, mul_scalar;
    flx_affine_t affine;
    flx_release_t release;
    flx_void_t clear_error;
    PyObject *fallback[N_OPS]; /* Python callables (a, b) or (a,) */
    PyObject *raise_last;      /* raises the pending C error */
    PyObject *tensor_cls;      /* fluxion.Tensor, the class of results */
    allocfunc tensor_alloc;    /* its tp_alloc and tp_free, looked up once at bind() */
    freefunc tensor_free;
    int bound;
    long in_callback;          /* > 0 while a C callback into Python runs: use the fallbacks */
    int alive;                 /* 0 once the interpreter shuts down: no more releases */
} G = {.alive = 1};

static PyTypeObject *TensorBase_Type;

typedef struct {
    PyObject_HEAD
    void *ptr;
} TensorObject;

/* Py_XSETREF is not in the limited API. */
static void set_ref(PyObject **slot, PyObject *v) {
    PyObject *old = *slot;
    Py_INCREF(v);
    *slot = v;
    Py_XDECREF(old);
}

/* fluxion.Tensor itself first: one pointer compare, where PyObject_TypeCheck on the subclass
 * walks its MRO on every operand of every op. */
static int is_tensor(PyObject *o) {
    return Py_TYPE(o) == (PyTypeObject *)G.tensor_cls || PyObject_TypeCheck(o, TensorBase_Type);
}

/* A new fluxion.Tensor owning p (NULL p: raise the pending C error). */
static PyObject *wrap(void *p) {
    if (!p) {
        PyObject *r = PyObject_CallObject(G.raise_last, NULL);
        Py_XDECREF(r);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "fluxion: op failed");
        return NULL;
    }
    PyObject *o = G.tensor_alloc((PyTypeObject *)G.tensor_cls, 0);
    if (!o) {
        G.release(p);
        return NULL;
    }
    ((TensorObject *)o)->ptr = p;
    return o;
}

static void Tensor_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    void *p = ((TensorObject *)self)->ptr;
    ((TensorObject *)self)->ptr = NULL;
    if (p && G.alive && G.release) G.release(p);
    freefunc f = tp == (PyTypeObject *)G.tensor_cls ? G.tensor_free
                                                    : (freefunc)PyType_GetSlot(tp, Py_tp_free);
    f(self);
    Py_DECREF(tp);
}

static PyObject *Tensor_get_ptr(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromVoidPtr(((TensorObject *)self)->ptr);
}

static int Tensor_set_ptr(PyObject *self, PyObject *v, void *closure) {
    (void)closure;
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "fluxion: _ptr cannot be deleted");
        return -1;
    }
    void *p = (v == Py_None) ? NULL : PyLong_AsVoidPtr(v);
    if (!p && PyErr_Occurred()) return -1;
    ((TensorObject *)self)->ptr = p;
    return 0;
}

static PyObject *fallback2(int op, PyObject *a, PyObject *b) {
    if (!G.fallback[op]) Py_RETURN_NOTIMPLEMENTED;
    return PyObject_CallFunctionObjArgs(G.fallback[op], a, b, NULL);
}

/* A Python float or int (not bool) as a double; 0 when o is something else. */
static int as_number(PyObject *o, double *v) {
    if (PyFloat_Check(o)) {
        *v = PyFloat_AsDouble(o);
        return 1;
    }
    if (PyLong_Check(o) && !PyBool_Check(o)) {
        *v = PyLong_AsDouble(o);
        if (*v == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return 1;
    }
    return 0;
}

/* tensor (op) number through a one-node scalar op; NULL without an error set when the C op
 * refuses (not a float tensor), so the caller falls back. */
static PyObject *try_scalar(void *(*f)(void *, double), void *t, double v) {
    void *p = f(t, v);
    if (!p) {
        G.clear_error();
        return NULL;
    }
    return wrap(p);
}

static PyObject *binary_slot(int op, PyObject *a, PyObject *b) {
    if (G.in_callback) return fallback2(op, a, b);
    int ta = is_tensor(a), tb = is_tensor(b);
    if (ta && tb)
        return wrap(((flx_binary_t)G.op[op])(((TensorObject *)a)->ptr, ((TensorObject *)b)->ptr));
    double v;
    PyObject *r = NULL;
    if (op == OP_ADD || op == OP_MUL) {
        PyObject *t = ta ? a : b, *o = ta ? b : a;
        if (as_number(o, &v))
            r = try_scalar(op == OP_ADD ? G.add_scalar : G.mul_scalar, ((TensorObject *)t)->ptr, v);
    } else if (op == OP_SUB) {
        if (ta && as_number(b, &v)) r = try_scalar(G.add_scalar, ((TensorObject *)a)->ptr, -v);
        else if (tb && as_number(a, &v)) {
            void *p = G.affine(((TensorObject *)b)->ptr, -1.0, v);
            if (p) r = wrap(p);
            else G.clear_error();
        }
    }
    if (r || PyErr_Occurred()) return r;
    return fallback2(op, a, b);
}

/* The number slots that go straight to one C op: X(function suffix, op, type slot). Each list
 * makes both the slot functions and their Tensor_slots entries. */
#define FAST_BINARY_SLOTS(X)                                                                    \
    X(add, OP_ADD, Py_nb_add) X(sub, OP_SUB, Py_nb_subtract) X(mul, OP_MUL, Py_nb_multiply)     \
    X(div, OP_DIV, Py_nb_true_divide) X(matmul, OP_MATMUL, Py_nb_matrix_multiply)
#define FAST_UNARY_SLOTS(X) X(neg, OP_NEG, Py_nb_negative) X(abs, OP_ABS, Py_nb_absolute)

#define DEFINE_BINARY_SLOT(name, op, slot) \
    static PyObject *nb_##name(PyObject *a, PyObject *b) { return binary_slot(op, a, b); }
FAST_BINARY_SLOTS(DEFINE_BINARY_SLOT)
#undef DEFINE_BINARY_SLOT

static PyObject *nb_pow(PyObject *a, PyObject *b, PyObject *mod) {
    if (mod != Py_None) {
        PyErr_SetString(PyExc_TypeError, "fluxion: pow() with a modulus is not supported");
        return NULL;
    }
    /* x ** number has its own nodes (square, pow_scalar): the Python fallback picks them */
    if (G.in_callback || !is_tensor(a) || !is_tensor(b)) return fallback2(OP_POW, a, b);
    return binary_slot(OP_POW, a, b);
}

static PyObject *unary_slot(int op, PyObject *a) {
    if (G.in_callback) return PyObject_CallFunctionObjArgs(G.fallback[op], a, NULL);
    return wrap(((flx_unary_t)G.op[op])(((TensorObject *)a)->ptr));
}

#define DEFINE_UNARY_SLOT(name, op, slot) \
    static PyObject *nb_##name(PyObject *a) { return unary_slot(op, a); }
FAST_UNARY_SLOTS(DEFINE_UNARY_SLOT)
#undef DEFINE_UNARY_SLOT

static PyObject *nb_pos(PyObject *a) {
    Py_INCREF(a);
    return a;
}

static PyObject *richcompare(PyObject *a, PyObject *b, int cmp) {
    static const int ops[] = {OP_LT, OP_LE, OP_EQ, OP_NE, OP_GT, OP_GE}; /* Py_LT .. Py_GE */
    int op = ops[cmp];
    if (!G.in_callback && is_tensor(a) && is_tensor(b))
        return wrap(((flx_binary_t)G.op[op])(((TensorObject *)a)->ptr, ((TensorObject *)b)->ptr));
    return fallback2(op, a, b);
}

static PyGetSetDef Tensor_getset[] = {
    {"_ptr", Tensor_get_ptr, Tensor_set_ptr, "address of the C handle (flx_tensor *)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Tensor_slots[] = {
    {Py_tp_dealloc, (void *)Tensor_dealloc},
    {Py_tp_getset, (void *)Tensor_getset},
    {Py_tp_richcompare, (void *)richcompare},
#define SLOT_ENTRY(name, op, slot) {slot, (void *)nb_##name},
    FAST_BINARY_SLOTS(SLOT_ENTRY) FAST_UNARY_SLOTS(SLOT_ENTRY)
#undef SLOT_ENTRY
    {Py_nb_power, (void *)nb_pow},
    {Py_nb_positive, (void *)nb_pos},
    {Py_tp_doc, (void *)"C handle of a fluxion tensor (base of fluxion.Tensor)."},
    {0, NULL},
};

static PyType_Spec Tensor_spec = {
    "fluxion._fast.TensorBase", sizeof(TensorObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, Tensor_slots,
};

/* ---- module-level op functions --------------------------------------------------------------
 * self of each function is a capsule holding an op_fn: the C entry point and the fallback. */
typedef struct {
    void *fn;
    PyObject *fallback; /* for binary functions: called when an operand is not a tensor */
    PyMethodDef def;
    char name[64];
    char *doc;
} op_fn;

static PyObject *unary_call(PyObject *self, PyObject *x) {
    op_fn *f = (op_fn *)PyCapsule_GetPointer(self, "fluxion._fast.op");
    if (!f) return NULL;
    if (G.in_callback || !is_tensor(x)) return PyObject_CallFunctionObjArgs(f->fallback, x, NULL);
    return wrap(((flx_unary_t)f->fn)(((TensorObject *)x)->ptr));
}

static PyObject *binary_call(PyObject *self, PyObject *args) {
    op_fn *f = (op_fn *)PyCapsule_GetPointer(self, "fluxion._fast.op");
    if (!f) return NULL;
    PyObject *a, *b;
    if (!PyArg_UnpackTuple(args, f->name, 2, 2, &a, &b)) return NULL;
    if (G.in_callback || !is_tensor(a) || !is_tensor(b))
        return PyObject_CallFunctionObjArgs(f->fallback, a, b, NULL);
    return wrap(((flx_binary_t)f->fn)(((TensorObject *)a)->ptr, ((TensorObject *)b)->ptr));
}

static void op_fn_free(PyObject *cap) {
    op_fn *f = (op_fn *)PyCapsule_GetPointer(cap, "fluxion._fast.op");
    if (f) {
        Py_XDECREF(f->fallback);
        PyMem_Free(f->doc);
        PyMem_Free(f);
    }
}

static PyObject *make_fn(PyObject *args, int binary) {
    PyObject *addr, *fallback;
    const char *name, *doc;
    if (!PyArg_ParseTuple(args, "OsOs", &addr, &name, &fallback, &doc)) return NULL;
    void *fn = PyLong_AsVoidPtr(addr);
    if (!fn) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "fluxion._fast: NULL function");
        return NULL;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fluxion._fast: fallback must be callable");
        return NULL;
    }
    op_fn *f = (op_fn *)PyMem_Calloc(1, sizeof *f);
    if (!f) return PyErr_NoMemory();
    f->fn = fn;
    Py_INCREF(fallback);
    f->fallback = fallback;
    strncpy(f->name, name, sizeof f->name - 1);
    f->def.ml_name = f->name;
    f->def.ml_meth = binary ? (PyCFunction)binary_call : (PyCFunction)unary_call;
    f->def.ml_flags = binary ? METH_VARARGS : METH_O;
    size_t dl = strlen(doc);
    f->doc = (char *)PyMem_Malloc(dl + 1);
    if (!f->doc) {
        Py_DECREF(fallback);
        PyMem_Free(f);
        return PyErr_NoMemory();
    }
    memcpy(f->doc, doc, dl + 1);
    f->def.ml_doc = f->doc;
    PyObject *cap = PyCapsule_New(f, "fluxion._fast.op", op_fn_free);
    if (!cap) {
        Py_DECREF(fallback);
        PyMem_Free(f->doc);
        PyMem_Free(f);
        return NULL;
    }
    PyObject *r = PyCFunction_NewEx(&f->def, cap, NULL);
    Py_DECREF(cap); /* the function holds it */
    return r;
}

static PyObject *unary_fn(PyObject *m, PyObject *args) { (void)m; return make_fn(args, 0); }
static PyObject *binary_fn(PyObject *m, PyObject *args) { (void)m; return make_fn(args, 1); }

/* bind(addresses: dict[str, int], fallbacks: dict[str, callable], raise_last, tensor_cls) */
static PyObject *bind(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *addrs, *fbs, *raise_last, *cls;
    if (!PyArg_ParseTuple(args, "O!O!OO", &PyDict_Type, &addrs, &PyDict_Type, &fbs, &raise_last,
                          &cls))
        return NULL;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, TensorBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "fluxion._fast.bind: tensor_cls must subclass TensorBase");
        return NULL;
    }
#define ADDR(key, dst)                                                                           \
    do {                                                                                         \
        PyObject *v_ = PyDict_GetItemString(addrs, key);                                          \
        if (!v_ || !(dst = PyLong_AsVoidPtr(v_))) {                                               \
            if (!PyErr_Occurred())                                                               \
                PyErr_Format(PyExc_KeyError, "fluxion._fast.bind: no address for %s", key);      \
            return NULL;                                                                         \
        }                                                                                        \
    } while (0)
    void *tmp;
    for (int i = 0; i < N_OPS; i++) {
        ADDR(op_names[i], G.op[i]);
        PyObject *fb = PyDict_GetItemString(fbs, op_names[i]);
        if (!fb || !PyCallable_Check(fb)) {
            PyErr_Format(PyExc_KeyError, "fluxion._fast.bind: no fallback for %s", op_names[i]);
            return NULL;
        }
        set_ref(&G.fallback[i], fb);
    }
    ADDR("add_scalar", tmp); G.add_scalar = (flx_scalar_t)tmp;
    ADDR("mul_scalar", tmp); G.mul_scalar = (flx_scalar_t)tmp;
    ADDR("affine", tmp); G.affine = (flx_affine_t)tmp;
    ADDR("release", tmp); G.release = (flx_release_t)tmp;
    ADDR("clear_error", tmp); G.clear_error = (flx_void_t)tmp;
#undef ADDR
    set_ref(&G.raise_last, raise_last);
    set_ref(&G.tensor_cls, cls);
    G.tensor_alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)cls, Py_tp_alloc);
    G.tensor_free = (freefunc)PyType_GetSlot((PyTypeObject *)cls, Py_tp_free);
    if (!G.tensor_alloc || !G.tensor_free) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "fluxion._fast.bind: no tp_alloc/tp_free");
        return NULL;
    }
    G.bound = 1;
    Py_RETURN_NONE;
}

static PyObject *enter_callback(PyObject *m, PyObject *a) { (void)m; (void)a; G.in_callback++; Py_RETURN_NONE; }
static PyObject *leave_callback(PyObject *m, PyObject *a) { (void)m; (void)a; G.in_callback--; Py_RETURN_NONE; }
static PyObject *shutdown(PyObject *m, PyObject *a) { (void)m; (void)a; G.alive = 0; Py_RETURN_NONE; }

static PyObject *wrap_py(PyObject *m, PyObject *addr) {
    (void)m;
    void *p = (addr == Py_None) ? NULL : PyLong_AsVoidPtr(addr);
    if (!p && PyErr_Occurred()) return NULL;
    return wrap(p);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(addresses, fallbacks, raise_last, tensor_cls)"},
    {"unary_fn", unary_fn, METH_VARARGS, "unary_fn(address, name, fallback, doc) -> function"},
    {"binary_fn", binary_fn, METH_VARARGS, "binary_fn(address, name, fallback, doc) -> function"},
    {"wrap", wrap_py, METH_O, "wrap(address) -> Tensor owning that reference (0: raise)"},
    {"enter_callback", enter_callback, METH_NOARGS, "a C callback into Python starts"},
    {"leave_callback", leave_callback, METH_NOARGS, "a C callback into Python ends"},
    {"shutdown", shutdown, METH_NOARGS, "stop releasing handles (interpreter exit)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fluxion._fast", "C hot path of the fluxion bindings (abi3).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    TensorBase_Type = (PyTypeObject *)PyType_FromSpec(&Tensor_spec);
    if (!TensorBase_Type) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(TensorBase_Type);
    if (PyModule_AddObject(m, "TensorBase", (PyObject *)TensorBase_Type) < 0) {
        Py_DECREF(TensorBase_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
