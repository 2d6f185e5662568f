"""fluxion — Python bindings of the fluxion GPU tensor autodiff runtime.

A thin ctypes layer over the C API (``include/fluxion/fluxion.h``): lazy tensors with reverse
and forward mode autodiff, functional transforms (:func:`grad`, :func:`vjp`, :func:`jvp`,
:func:`hvp`), custom differentiable functions (:class:`custom_fn`), and zero-copy exchange with
numpy, PyTorch, CuPy and JAX through DLPack (:func:`from_dlpack`, ``Tensor.__dlpack__``) and
``__cuda_array_interface__``.

    >>> import fluxion as fx
    >>> x = fx.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad.tolist()
    [2.0, 4.0, 6.0]
"""

from ._lib import library_path
from ._core import (
    DType,
    FluxionError,
    Tensor,
    abs,
    add,
    affine,
    arange,
    argmax,
    as_dtype,
    bool_,
    broadcast_to,
    cast,
    clamp,
    clip,
    concat,
    concatenate,
    cos,
    cosh,
    cross_entropy,
    cuda_device_count,
    detach,
    device,
    diag,
    diagonal,
    div,
    dot,
    elu,
    eq,
    erf,
    eval,
    exp,
    expand_dims,
    eye,
    bfloat16,
    float16,
    float32,
    float64,
    full,
    gather,
    ge,
    gelu,
    gt,
    has_cuda,
    index_select,
    int32,
    int64,
    le,
    leaky_relu,
    live_tensors,
    log,
    log1p,
    log_softmax,
    logsumexp,
    lt,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mse_loss,
    mul,
    ne,
    neg,
    one_hot,
    ones,
    ones_like,
    outer,
    pad,
    permute,
    pow,
    rand,
    randn,
    reciprocal,
    relu,
    reshape,
    rsqrt,
    scalar,
    sigmoid,
    sign,
    sin,
    sinh,
    slice,
    softmax,
    softplus,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    sub,
    sum,
    synchronize,
    tanh,
    tensor,
    trace,
    transpose,
    unsqueeze,
    var,
    where,
    zeros,
    zeros_like,
)
from ._interop import asarray, from_dlpack
from ._autodiff import (
    custom_fn,
    grad,
    grad_of,
    hvp,
    is_grad_enabled,
    jvp,
    no_grad,
    value_and_grad,
    vjp,
)
from . import distributed, linalg, nn, optim
from ._checkpoint import load, load_tensor, save
from ._compile import Compiled, compile
from ._transforms import (
    cuda_device_info,
    get_fusion,
    get_math_mode,
    gradcheck,
    hessian,
    jacobian,
    reset_stats,
    set_fusion,
    set_math_mode,
    stats,
    version,
)
from .nn.modules import manual_seed

__version__ = "0.1.0"

__all__ = [n for n in dir() if not n.startswith("_")]
