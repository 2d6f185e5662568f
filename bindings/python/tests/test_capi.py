"""One source of truth: the ctypes declarations (fluxion/_capi.py) and stubs (_capi.pyi) are
generated from include/fluxion/fluxion.h, and every public flx_ function has a Python
counterpart in the package or an entry with a reason in EXCLUDED."""
import ast
import re
import sys
from pathlib import Path

import pytest

import fluxion as fx
from fluxion import _capi, _lib

PKG = Path(fx.__file__).resolve().parent
TOOLS = Path(__file__).resolve().parent.parent / "tools"
HEADER = Path(__file__).resolve().parents[3] / "include" / "fluxion" / "fluxion.h"

# C functions deliberately without a Python function of their own, and why.
EXCLUDED = {
    "flx_dtype_size": "fluxion.DType.itemsize (checked against it below)",
    "flx_dtype_name": "fluxion.DType.name (numpy spelling; checked against it below)",
    "flx_device_cpu": "fluxion.device('cpu') fills the flx_device struct directly",
    "flx_device_cuda": "fluxion.device('cuda:N') fills the flx_device struct directly",
    "flx_ctx_destroy": "contexts are process-wide (one per device) and live until exit, since "
                       "tensors may outlive any Python scope",
    "flx_dim": "Tensor.shape[axis]",
    "flx_scope_begin": "each Python Tensor owns its reference; a C scope would own it twice",
    "flx_scope_end": "see flx_scope_begin",
    "flx_scope_depth": "see flx_scope_begin (callbacks into Python track their own depth)",
    "flx_randn": "fluxion.randn(mean=0, std=1) calls flx_normal, of which flx_randn is the "
                 "standard-normal shorthand",
    "flx_sum_all": "fluxion.sum(x) (axis=None)",
    "flx_mean_all": "fluxion.mean(x) (axis=None)",
    "flx_hvp": "fluxion.hvp composes flx_grad_of and flx_jvp (the same forward-over-reverse "
               "algorithm) so that it nests with the other Python transforms",
    "flx_plan_default_options": "a zero-initialised ctypes flx_plan_options is the default "
                                "(the header's 'zero options')",
    "flx_plan_set_input": "fluxion.compile binds tensors through flx_plan_run and arrays "
                          "through flx_plan_set_input_host",
}


def _header_decls():
    sys.path.insert(0, str(TOOLS))
    try:
        import gen_capi
    finally:
        sys.path.pop(0)
    return gen_capi


needs_header = pytest.mark.skipif(not HEADER.is_file() or not TOOLS.is_dir(),
                                  reason="not run from a source checkout (no fluxion.h)")


@needs_header
def test_generated_declarations_are_current():
    gen = _header_decls()
    for path, text in gen.generate(HEADER).items():
        have = (PKG / path.name).read_text()
        assert have == text, (f"{path.name} is stale: run python bindings/python/tools/gen_capi.py")


def test_stubs_parse_and_declare_every_function():
    # a C parameter named like a Python keyword (flx_l2_penalty's lambda) must not break the stubs
    tree = ast.parse((PKG / "_capi.pyi").read_text())
    lib = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Library")
    declared = {n.name for n in lib.body if isinstance(n, ast.FunctionDef)}
    declared |= {t.id for n in lib.body if isinstance(n, ast.Assign) for t in n.targets}
    assert declared == set(_capi.PROTOTYPES)


def _used_names():
    src = "".join(p.read_text() for p in PKG.rglob("*.py") if p.name != "_capi.py")
    used = set(re.findall(r"\bflx_\w+", src))
    # wrappers made by the factories in _core.py: _unary("exp", ...), _binfn("add", ...), ...
    used |= {"flx_" + n for n in re.findall(r'\b(?:_unary|_binfn|_reducer|_need)\("(\w+)"', src)}
    return used


def test_every_c_function_has_a_python_counterpart():
    used = _used_names()
    missing = [f for f in _capi.PROTOTYPES if f not in used and f not in EXCLUDED]
    assert not missing, (
        "public C functions without a Python counterpart: " + ", ".join(missing) +
        " (wrap them in bindings/python/fluxion, or add them to EXCLUDED in "
        "tests/test_capi.py with a reason)")
    stale = [f for f in EXCLUDED if f not in _capi.PROTOTYPES]
    assert not stale, f"EXCLUDED names functions the header no longer has: {stale}"


def test_every_declared_function_is_exported():
    assert _lib.missing == [], f"libfluxion lacks {_lib.missing} declared in the header"


def test_dtype_table_agrees_with_the_library():
    names = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool_": "bool"}
    for d in (fx.float32, fx.float64, fx.int32, fx.int64, fx.bool_):
        assert _lib.lib.flx_dtype_size(d.code) == d.itemsize
        assert _lib.lib.flx_dtype_name(d.code).decode() == names[d.name]


def test_parser_rejects_unknown_types():
    gen = _header_decls()
    with pytest.raises(ValueError, match="unknown C type"):
        gen.Parser("FLX_API mystery_t flx_x(void);").parse()
    d = gen.Parser("typedef struct flx_q flx_q;\nFLX_API flx_q *flx_q_new(const int64_t *s, "
                   "void (*cb)(void *u));").parse()
    assert d.functions["flx_q_new"] == ("c_void_p", [("s", "POINTER(c_int64)"),
                                                    ("cb", "flx_q_new__cb")])
    d = gen.Parser("#define FLX_K 2.5\ntypedef uint32_t flx_idx;\n"
                   "FLX_API flx_idx flx_f(const flx_idx *v, float w);").parse()
    assert d.functions["flx_f"] == ("c_uint32", [("v", "POINTER(c_uint32)"), ("w", "c_float")])
    assert ("FLX_K", "2.5") in gen._numeric_defines(d)


def test_header_constants_are_exposed():
    assert _capi.FLX_MAX_DIMS == 8 and fx.nn.init.GAIN_RELU == pytest.approx(2 ** 0.5)
