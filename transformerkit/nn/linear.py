"""The linear layer, y = x W^T + b, and the matrix-multiply library it runs on.

PyTorch's CPU build sends float32 matmuls to Intel's MKL and bfloat16 ones to oneDNN. On AMD processors MKL
runs its AVX2 code even where the processor has AVX-512, so float32 gets half the machine: on a 2-core AMD
EPYC (AVX-512), one thread, a (2048 x 384) @ (384 x 1536) product ran at 108 GFLOP/s through MKL and 240
through oneDNN, with the gradient products alike (22 ms against 10-13 ms each). Which library is faster is
measured once per process (runtime.onednn_matmul_pays), not assumed from the processor's name, so an Intel
machine where MKL is as fast keeps it; weight gradients are measured apart (runtime.onednn_weight_gradient_pays):
on a Zen 4 EPYC oneDNN's were the slower, its other products the faster. The results are float32 products
either way: only the order of the additions differs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .. import runtime

# Smaller products stay with F.linear: oneDNN costs about 11 us a call before it multiplies anything, against
# 4 for MKL (measured, same machine), and a one-row product is a matrix-vector product, bound by how fast the
# weights stream, where the two libraries are level (and decoding_layout already picks the faster layout).
MIN_MULTIPLY_ADDS = 1 << 20
# A packed copy serves products of up to this many rows (decoding steps: one row per sequence or beam); larger ones
# (a prompt's prefill, an encoder pass) go through `linear`, whose choice of library was timed at that size.
PACKED_MAX_ROWS = 64
# Weights smaller than this keep the libraries' one-row products: a row kernel costs 0.05 s a shape with inductor's
# cache on disk and 0.5 s without (about 3 s more once per process, to import and start inductor; AMD EPYC), and
# below this size a product takes a few microseconds whichever code runs it.
ROW_KERNEL_MIN_BYTES = 1 << 18
# In a decoding step traced whole (inference/step_graph.py), a one-row product with a weight of this size or more is
# one opaque call of its row kernel (row_kernel_product); smaller ones stay the kernel's expression, fused by inductor
# with their neighbours. Measured on a 2-core AMD EPYC of family 25 (Zen 4), 2 threads, greedy at batch 1, in turn
# in one process, the same tokens: gpt2-small in bfloat16 72 -> 126 tokens/s with its 4.7 MB feed-forward weights
# and the output layer called so, but 70 -> 93 with the 1.2 MB attention weights called so too; float32 64 -> 74.
# The shakespeare-char model (weights of at most 2.4 MB in float32) went 601 -> 535 with those of 1 MB and up
# called so.
ROW_OPAQUE_MIN_BYTES = 1 << 22


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out), through oneDNN where that pays (see the
    module docstring), F.linear everywhere else (other dtypes, autocast, GPUs, torch.compile, small products)."""
    if _use_onednn(x, weight):  # (N, in) through the Function; the view outside it, so callers may write in place
        return _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def add_linear(out: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """out + x @ weight^T, with out (M, N), x (M, K), weight (N, K): a running sum of weight gradients (the fused
    loss's, chunk by chunk) in one pass over `out`, through oneDNN where a layer's weight gradient would go there
    (runtime.onednn_weight_gradient_pays). The result is `out` itself, updated in place (MKL), or a new tensor
    (oneDNN: `out` is read, not written): use the returned one."""
    if _use_onednn(x, weight) and runtime.onednn_weight_gradient_pays():
        return torch.ops.mkldnn._linear_pointwise.binary(x, out, weight, None, "add")  # a new (M, N)
    return out.addmm_(x, weight.t())


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict, same initialisation) whose product goes through `linear`, or,
    for the few-row products of decoding, through a copy of the weight made for them (`pack()`) or, for one row, a
    kernel compiled for its shape (`stream_rows()`)."""

    packed: Tensor | None = None  # for inference: the weight in oneDNN's blocked layout, or in float32 (pack)
    _packed_from: tuple[int, int | None] = (0, None)  # the weight's storage and version when it was packed
    row_product: Callable | None = None  # row_kernel for this weight, for inference (stream_rows)
    _row_for: tuple = ()  # what row_product was compiled for (_row_key)

    def pack(self, layout: str = "packed") -> None:
        """Keep a copy of the weight, read instead of the weight where nothing needs a gradient: in oneDNN's
        blocked layout ("packed"; oneDNN otherwise re-packs the weight at every call, which costs more than the
        product itself for a few rows), or, for a bfloat16 weight small enough to sit in the caches, in float32
        ("float32"; see packed_product). runtime.decoding_layout_choice says which pays. The copy takes as much
        memory as the weight or twice as much. It is dropped when the module is moved or cast, and at the next
        call after the weight changed in place (training, load_state_dict); a write through `weight.data` goes
        unseen, so pack again after one."""
        if layout not in ("packed", "float32"):
            raise ValueError(f"unknown layout {layout!r}: packed or float32")
        weight = self.weight
        if layout == "float32" and weight.dtype == torch.float32:
            raise ValueError("a float32 copy serves a bfloat16 weight; this one is float32 already")
        self.packed = decoding_copy(weight, layout)
        # an inference-mode tensor has no version counter (and cannot be changed in place outside that mode)
        self._packed_from = (weight.data_ptr(), None if weight.is_inference() else weight._version)

    def stream_rows(self) -> None:
        """Send one-row products (a decoding step of one sequence) through a kernel compiled for this weight
        (row_kernel). The kernel reads the weight as it is at each call, so a change in place needs nothing; a
        weight or bias of another shape or dtype, or another thread count (built into the kernel), drops it at
        the next call, and a move or cast at once."""
        self._row_for = self._row_key()
        self.row_product = row_kernel(*self._row_for)

    def _row_key(self) -> tuple:
        weight = self.weight
        return (*weight.shape, weight.dtype, self.bias is not None, torch.get_num_threads())

    def _apply(self, fn, recurse: bool = True):
        self.packed = self.row_product = None  # .to(), .float(), .cuda(): both describe the old weight
        return super()._apply(fn, recurse)

    def __getstate__(self):
        """Copies and pickles leave the packed copy and the row kernel behind (an opaque tensor has no storage
        to copy; a compiled kernel does not pickle)."""
        state = dict(super().__getstate__())
        state.pop("packed", None)
        state.pop("row_product", None)
        return state

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight  # read once: a module attribute lookup costs as much as the checks below
        if self.row_product is not None and x.numel() == x.shape[-1] and self._row_product_applies(x, weight):
            bias = () if self.bias is None else (self.bias,)
            row = x.reshape(1, -1).contiguous()  # (1, in)
            traced = runtime.tracing()
            if traced and weight.nbytes >= ROW_OPAQUE_MIN_BYTES:  # see ROW_OPAQUE_MIN_BYTES
                y = torch.ops.transformerkit.row_kernel_product(row, weight, self.bias)  # (1, out)
            elif traced or torch.compiler.is_compiling():  # the same expression, fused with its neighbours
                (y,) = multiply_and_sum(row, weight, *bias)
            else:
                (y,) = self.row_product(row, weight, *bias)
            return y.view(*x.shape[:-1], -1)
        if torch.compiler.is_compiling():
            return linear(x, weight, self.bias)
        packed = self.packed if self.packed is not None and self._packed_applies(x, weight) else None
        if runtime.tracing():  # recorded as one call of the kernel chosen here (decoding_product)
            return torch.ops.transformerkit.decoding_product(x, weight, self.bias, packed)
        return linear(x, weight, self.bias) if packed is None else packed_product(x, packed, self.bias)

    def _row_product_applies(self, x: Tensor, weight: Tensor) -> bool:
        if self._row_key() != self._row_for:
            self.row_product = None  # stale: the weight, the bias or the thread count changed since
            return False
        return self._without_autograd(x, weight) and weight.is_contiguous() and x.device.type == "cpu"

    def _packed_applies(self, x: Tensor, weight: Tensor) -> bool:
        version = None if weight.is_inference() else weight._version
        if (weight.data_ptr(), version) != self._packed_from:
            self.packed = None  # stale: the weight changed since it was packed
            return False
        return self._without_autograd(x, weight) and x.numel() <= PACKED_MAX_ROWS * x.shape[-1]

    def _without_autograd(self, x: Tensor, weight: Tensor) -> bool:
        """Whether a product outside autograd and autocast (a packed copy, a row kernel) may serve this call:
        nothing needs a gradient, and x, the weight and the bias share one dtype."""
        bias = self.bias
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad))
        return (not needs_grad and x.dtype == weight.dtype and (bias is None or bias.dtype == weight.dtype)
                and not torch.is_autocast_enabled("cpu"))


def decoding_product(x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor | None) -> Tensor:
    """x (..., in) @ weight^T + bias through the packed copy or `linear`, as Linear runs it eagerly. A decoding step
    traced whole (inference/step_graph.py) records each such product as one call of this operation, which
    inductor leaves alone: with inductor's own products the whole step ran 2.5x slower in bfloat16 (batch 8,
    shakespeare-char size, one thread beside a training run; level in float32). Defined through
    torch.library.Library rather than custom_op, whose wrappers cost 5 us more a call (AMD EPYC): a step
    makes dozens."""
    return linear(x, weight, bias) if packed is None else packed_product(x, packed, bias)


def decoding_copy(weight: Tensor, layout: str) -> Tensor:
    """The copy of an (out, in) weight that Linear.pack keeps for `layout` and packed_product reads: oneDNN's
    blocked layout ("packed") or float32 ("float32")."""
    return pack_weight(weight) if layout == "packed" else weight.detach().float()


def packed_product(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., in) @ weight^T + bias through Linear.pack's copy of the weight: oneDNN's blocked layout (the same
    dtype as x), or a float32 copy of a bfloat16 weight. With the latter the product runs in float32 and is rounded
    to bfloat16 once, as oneDNN's bfloat16 kernels accumulate in float32 and round the result: the same values up
    to the order of the additions. It pays for small weights, which sit in the caches, where a call's fixed cost
    is most of its time: oneDNN's bfloat16 call for one row of a 128 x 128 weight took 15 us packed and 20-22 plain,
    the float32 one with its two casts 5.7 (2-core AMD EPYC of family 25, Zen 4, 2 threads)."""
    if packed.dtype == x.dtype:
        return onednn_product(x, packed, bias)
    y = linear(x.float(), packed, None if bias is None else bias.float())  # (..., out) in float32
    return y.to(x.dtype)


_OPS = torch.library.Library("transformerkit", "DEF")
_OPS.define("decoding_product(Tensor x, Tensor weight, Tensor? bias, Tensor? packed) -> Tensor")
_OPS.impl("decoding_product", decoding_product, "CompositeExplicitAutograd")


@torch.library.register_fake("transformerkit::decoding_product")
def _(x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def row_kernel_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (1, in) @ weight^T + bias through this weight's row kernel: what a traced step records as one operation
    for a large weight (ROW_OPAQUE_MIN_BYTES), which inductor leaves alone."""
    kernel = row_kernel(*weight.shape, weight.dtype, bias is not None, torch.get_num_threads())
    return kernel(x, weight, *(() if bias is None else (bias,)))[0]


_OPS.define("row_kernel_product(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_OPS.impl("row_kernel_product", row_kernel_product, "CompositeExplicitAutograd")


@torch.library.register_fake("transformerkit::row_kernel_product")
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(1, weight.shape[0])


def can_pack_weights(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build and processor can pack a weight of `dtype` for oneDNN (pack_weight): bfloat16
    needs a processor oneDNN multiplies it on (AVX-512 or AVX-NE-CONVERT on x86)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_weight(weight: Tensor) -> Tensor:
    """An (out, in) float weight in oneDNN's blocked layout for a few rows at a time: an opaque tensor that only
    onednn_product reads.

    oneDNN picks the layout for the number of rows it is told to expect. Told PACKED_MAX_ROWS rather than 1, its
    float32 products of 5 and 8 rows ran 1.2-2.0x faster, and of one row level or up to 1.9x faster (2-core AMD
    EPYC, AVX-512 bf16, 2 threads, weights read from memory: 1152 x 384 at 8 rows 81 -> 55 us, 3072 x 768 357 ->
    223 us); bfloat16 was level whatever it was told."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACKED_MAX_ROWS)


def onednn_product(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a (..., K) @ b (N, K)^T + bias through oneDNN, b plain or packed (pack_weight). oneDNN makes a contiguous
    copy of `a` where it is a transposed view (the weight gradient's g^T); `b` is read as it is strided."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


@lru_cache(maxsize=None)
def row_kernel(out_features: int, in_features: int, dtype: torch.dtype, bias: bool, threads: int) -> Callable:
    """A compiled one-row product: f(x (1, in), weight (out, in)[, bias (out,)]) -> (y (1, out),).

    Written as multiply-and-sum, (weight * x).sum(-1), inductor turns it into one loop over the weight's rows,
    split between the threads, each row streamed once from memory and reduced in vector registers (in float32
    for bfloat16 weights). Decoding one sequence is one such product per layer, bound by the rate the weights
    stream at, which differs by code: measured in runtime.row_kernel_pays. The graph is handed to inductor
    directly rather than through torch.compile, whose guards cost about 14 us a call on an AMD EPYC: as long as
    the product itself for a 1536 x 384 weight held in the caches. Compiled once per process, shape, dtype and
    thread count (inductor builds the count of the moment into the loop)."""
    from torch._inductor import compile as inductor_compile
    from torch.fx.experimental.proxy_tensor import make_fx

    examples = [torch.zeros(1, in_features, dtype=dtype), torch.zeros(out_features, in_features, dtype=dtype)]
    examples += [torch.zeros(out_features, dtype=dtype)] if bias else []
    with torch.inference_mode(False), torch.no_grad():
        return inductor_compile(make_fx(multiply_and_sum)(*examples), examples)


def multiply_and_sum(x: Tensor, weight: Tensor, *bias: Tensor) -> tuple[Tensor]:
    """x (1, in) @ weight (out, in)^T + bias, as row_kernel's inductor reads it -> (y (1, out),)."""
    y = (weight * x).sum(-1)  # (out, in) * (1, in) -> (out,)
    return ((y + bias[0] if bias else y)[None],)


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or weight.layout != torch.strided:
        return False
    rows = x.numel() // max(1, x.shape[-1])
    return rows > 1 and rows * weight.numel() >= MIN_MULTIPLY_ADDS and runtime.onednn_matmul_pays()


class _OneDNNLinear(torch.autograd.Function):
    """oneDNN's linear has no gradient formula in PyTorch: the backward pass is two more products, the input's
    gradient through oneDNN and the weight's through the library chosen for it (its first operand is a
    transposed view, which oneDNN copies: runtime.onednn_weight_gradient_pays).
    x (N, in), weight (out, in) -> (N, out)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors  # (N, in), (out, in); grad (N, out)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_product(grad, weight.t())  # grad @ W: (N, in)
        if ctx.needs_input_grad[1]:  # grad^T @ x: (out, in)
            grad_weight = onednn_product(grad.t(), x.t()) if runtime.onednn_weight_gradient_pays() else grad.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=0)
        return grad_x, grad_weight, grad_bias
