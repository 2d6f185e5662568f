"""fluxion.nn.functional: the C API's layers and losses as functions (PyTorch's names)."""

from __future__ import annotations

from ctypes import c_int64, c_void_p
from typing import Optional, Sequence, Tuple, Union

from .. import _core
from .._core import (Tensor, _i64, _L, _p, _ptrs, _wrap, cross_entropy, elu, gelu,
                     leaky_relu, log_softmax, mse_loss, one_hot, relu, sigmoid, softmax,
                     softplus, tanh, _REDUCTIONS)

__all__ = [
    "linear", "conv2d", "im2col", "col2im", "max_pool2d", "max_pool2d_indices", "avg_pool2d",
    "batch_norm", "layer_norm", "dropout", "dropout_mask", "embedding", "mse_loss",
    "cross_entropy", "binary_cross_entropy_with_logits", "log_cosh_loss", "hinge_loss",
    "l1_penalty", "l2_penalty", "rnn_cell", "gru_cell", "relu", "gelu", "sigmoid", "tanh",
    "softplus", "leaky_relu", "elu", "softmax", "log_softmax", "one_hot",
    "scaled_dot_product_attention",
]

IntPair = Union[int, Sequence[int]]


def _pair(v: Optional[IntPair], what: str):
    """A 2-array (h, w) for the C window arguments, or None for the C default."""
    if v is None:
        return None
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"fluxion.nn.functional: {what} must be an int or a pair, got {v!r}")
    return (c_int64 * 2)(*t)


def _opt(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else _p(t)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x W^T + b, W (out, in) (PyTorch's layout)."""
    return _wrap(_L.flx_linear(_p(x), _p(weight), _opt(bias)))


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """2-d cross-correlation, NCHW, weight (O, C, KH, KW), groups 1."""
    return _wrap(_L.flx_conv2d(_p(x), _p(weight), _opt(bias), _pair(stride, "stride"),
                               _pair(padding, "padding"), _pair(dilation, "dilation")))


def im2col(x: Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1) -> Tensor:
    """(N, C, H, W) -> (N, C KH KW, OH OW) columns (torch.nn.functional.unfold)."""
    return _wrap(_L.flx_im2col(_p(x), _pair(kernel_size, "kernel_size"), _pair(stride, "stride"),
                               _pair(padding, "padding"), _pair(dilation, "dilation")))


unfold = im2col


def col2im(cols: Tensor, output_size: IntPair, kernel_size: IntPair, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """The transpose of im2col: sums overlapping columns back into (N, C, H, W) (torch fold)."""
    return _wrap(_L.flx_col2im(_p(cols), _pair(output_size, "output_size"),
                               _pair(kernel_size, "kernel_size"), _pair(stride, "stride"),
                               _pair(padding, "padding"), _pair(dilation, "dilation")))


fold = col2im


def max_pool2d(x: Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, dilation: IntPair = 1,
               return_indices: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Max pooling (stride defaults to kernel_size); return_indices adds the flat argmax."""
    args = (_pair(kernel_size, "kernel_size"), _pair(stride, "stride"),
            _pair(padding, "padding"), _pair(dilation, "dilation"))
    y = _wrap(_L.flx_max_pool2d(_p(x), *args))
    if return_indices:
        return y, _wrap(_L.flx_max_pool2d_indices(_p(x), *args))
    return y


def max_pool2d_indices(x: Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
                       padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """Flat indices (int64) into x of each window's first maximum."""
    return _wrap(_L.flx_max_pool2d_indices(_p(x), _pair(kernel_size, "kernel_size"),
                                           _pair(stride, "stride"), _pair(padding, "padding"),
                                           _pair(dilation, "dilation")))


def avg_pool2d(x: Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0) -> Tensor:
    """Average pooling (zero padding counted, PyTorch's count_include_pad=True)."""
    return _wrap(_L.flx_avg_pool2d(_p(x), _pair(kernel_size, "kernel_size"),
                                   _pair(stride, "stride"), _pair(padding, "padding")))


def batch_norm_stats(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                     weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                     training: bool = False, momentum: float = 0.1, eps: float = 1e-5
                     ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Batch norm returning (y, new_running_mean, new_running_var): the new statistics are lazy
    tensors for the caller to assign (None in eval mode or without running statistics)."""
    want = training and running_mean is not None and running_var is not None
    nm, nv = c_void_p(), c_void_p()
    y = _L.flx_batch_norm(_p(x), _opt(weight), _opt(bias), _opt(running_mean), _opt(running_var),
                          bool(training), float(momentum), float(eps),
                          nm if want else None, nv if want else None)
    out = _wrap(y)
    return out, (_wrap(nm.value) if want else None), (_wrap(nv.value) if want else None)


def batch_norm(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over axis 1 (PyTorch's signature). In training mode with running
    statistics they are updated (assigned in place) as torch does."""
    y, nm, nv = batch_norm_stats(x, running_mean, running_var, weight, bias, training, momentum,
                                 eps)
    if nm is not None:
        from .._compile import assign_after_step

        assign_after_step(running_mean, nm)
        assign_after_step(running_var, nv)
    return y


def layer_norm(x: Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the trailing normalized_shape axes."""
    n = 1 if isinstance(normalized_shape, int) else len(tuple(normalized_shape))
    return _wrap(_L.flx_layer_norm(_p(x), n, _opt(weight), _opt(bias), float(eps)))


def dropout(x: Tensor, p: float = 0.5, training: bool = True, seed: int = 0) -> Tensor:
    """Inverted dropout with the counter-based generator (the mask is a function of seed)."""
    return _wrap(_L.flx_dropout(_p(x), float(p), int(seed), bool(training)))


def dropout_mask(shape: Sequence[int], p: float, seed: int = 0, device=None) -> Tensor:
    """The keep mask (bool) flx_dropout uses for (p, seed)."""
    s, n = _i64(tuple(int(v) for v in shape))
    return _wrap(_L.flx_dropout_mask(_core._ctx(device), n, s, float(p), int(seed)))


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """softmax(scale q k^T + mask) v over (batch, heads, seq, dim) (PyTorch's names); scale None
    is 1/sqrt(dim); is_causal masks bottom-right aligned (query i sees keys j <= i + T - S)."""
    return _wrap(_L.flx_attention(_p(query), _p(key), _p(value), bool(is_causal),
                                  0.0 if scale is None else float(scale)))


def embedding(indices: Tensor, weight: Tensor) -> Tensor:
    """weight[indices] (PyTorch's argument order: indices first)."""
    return _wrap(_L.flx_embedding(_p(weight), _p(indices)))


def _red(reduction: str) -> int:
    try:
        return _REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"fluxion: reduction must be 'mean', 'sum' or 'none', got {reduction!r}") from None


def binary_cross_entropy_with_logits(z: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """softplus(z) - z t, stable for any logit."""
    return _wrap(_L.flx_bce_with_logits(_p(z), _p(target), _red(reduction)))


def log_cosh_loss(y: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """log cosh(y - t)."""
    return _wrap(_L.flx_log_cosh_loss(_p(y), _p(target), _red(reduction)))


def hinge_loss(y: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """max(0, 1 - y t) for labels t in {-1, +1}."""
    return _wrap(_L.flx_hinge_loss(_p(y), _p(target), _red(reduction)))


def l2_penalty(params: Sequence[Tensor], lam: float) -> Tensor:
    """(lam / 2) sum ||p||^2 (gradient lam p)."""
    arr, n = _ptrs(list(params))
    return _wrap(_L.flx_l2_penalty(n, arr, float(lam)))


def l1_penalty(params: Sequence[Tensor], lam: float) -> Tensor:
    """lam sum |p|."""
    arr, n = _ptrs(list(params))
    return _wrap(_L.flx_l1_penalty(n, arr, float(lam)))


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """Elman cell: tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    return _wrap(_L.flx_rnn_cell(_p(x), _p(h), _p(w_ih), _p(w_hh), _opt(b_ih), _opt(b_hh)))


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """GRU cell, PyTorch's gate layout (r, z, n)."""
    return _wrap(_L.flx_gru_cell(_p(x), _p(h), _p(w_ih), _p(w_hh), _opt(b_ih), _opt(b_hh)))
