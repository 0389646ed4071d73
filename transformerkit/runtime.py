"""What the machine decides: threads, precision and allocator settings, chosen at run time and said aloud.

A recipe asks (`precision = "auto"`); this module answers for the processor it runs on. bfloat16 halves
the bytes every matmul reads, and where the processor multiplies it natively (AMX or AVX-512 BF16 on
x86, the BF16 extension on ARM, tensor cores on GPUs) it trains faster than float32. Where it does not,
PyTorch emulates it, 4x to 80x slower than float32 (measured on a Cascade Lake Xeon and on an AVX2 EPYC).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "TRANSFORMERKIT_PRECISION"
MATMUL_ENV = "TRANSFORMERKIT_MATMUL"  # onednn | split | default | auto: float32 CPU products (float32_libraries)
FLOAT32_LIBRARIES = ("onednn", "split", "default")  # see float32_libraries
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16 and AMX; "bf16" is ARM's BF16 extension
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_tuned = False
_threads_reason: str | None = None  # why choose_threads chose, once it has
_TRANSPOSE_MIN_BYTES = 1 << 20  # smaller weights sit in the caches, where transposing was not seen to matter
_LAYOUT_POOL_BYTES = 64 << 20  # weights per timed pass: past the caches, as a decoding step reads them
_tracing = False  # inside traced_step


@dataclass(frozen=True)
class Precision:
    """The resolved choice ("fp32" or "bf16", never "auto") and why it was made."""

    name: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32


def cpu_flags() -> set[str]:
    """The processor's feature flags (x86 'flags', ARM 'Features'), empty where /proc/cpuinfo is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_name() -> str:
    """The processor's name, with its family and model numbers where /proc/cpuinfo has them: a virtual machine
    may call every generation "AMD EPYC", and two "AMD EPYC" machines measured here differed 2x in matmul rate
    and in which library multiplied weight gradients faster (runtime.onednn_weight_gradient_pays)."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block ends
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            numbers = (f" (family {fields['cpu family']}, model {fields['model']})"
                       if {"cpu family", "model"} <= fields.keys() else "")
            return fields["model name"] + numbers
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` multiplies bfloat16 in hardware (not whether PyTorch can emulate it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_flags() & set(_CPU_BF16_FLAGS))
    return False


def _fastest(fn, repeats: int = 5, device_type: str = "cpu") -> float:
    """The best of `repeats` timed calls of fn, after one untimed call (kernel selection, allocations)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device_type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


@lru_cache(maxsize=None)
def bf16_speedup(width: int, device_type: str = "cpu") -> float:
    """float32 time / bfloat16 time of a feed-forward-sized matmul at this model width, each through the library
    the layers would use (nn/linear.py): a probe of a few milliseconds (and, the first time, onednn_matmul_pays'
    tens), run once per process and width. Above 1, bfloat16 is faster here."""
    from .nn.linear import linear  # float32 as the layers run it (oneDNN where that pays here)

    rows, inner = 1024, max(64, width)
    x = torch.randn(rows, inner, device=device_type)
    w = torch.randn(4 * inner, inner, device=device_type)
    xb, wb = x.bfloat16(), w.bfloat16()
    return (_fastest(lambda: linear(x, w), device_type=device_type)
            / _fastest(lambda: linear(xb, wb), device_type=device_type))


@lru_cache(maxsize=None)
def quantized_kernel(width: int) -> tuple[torch.dtype, float]:
    """(the activation dtype PyTorch's int4 CPU kernel is fastest with here, its speed-up over a float32 matmul)
    for one token through a feed-forward-sized layer at this width: a probe of a few milliseconds, once per
    process. On CPUs measured so far the kernel is fast with bfloat16 activations and falls back to slow code
    with float32 ones, native bfloat16 or not."""
    from .nn.quantized import Int4Linear

    width = max(32, width // 32 * 32)
    weight = torch.randn(4 * width, width) * 0.02
    layer = Int4Linear.from_float(weight, 32)

    x = torch.randn(1, width)
    dense = _fastest(lambda: torch.nn.functional.linear(x, weight))
    timed = {dtype: _fastest(lambda: layer(x.to(dtype))) for dtype in (torch.float32, torch.bfloat16)}
    dtype = min(timed, key=timed.get)
    return dtype, dense / timed[dtype]


@lru_cache(maxsize=None)
def decoding_layout_choice(out_features: int, in_features: int, dtype: torch.dtype) -> str:
    """How this machine runs one token through an (out, in) linear layer fastest: with the weight in nn.Linear's
    (out, in) rows ("linear"), stored transposed ("transposed": rows of `out` values, as transformers' Conv1D
    keeps GPT-2's), with a copy packed into oneDNN's own blocked layout ("packed", see nn/linear.py), or, for a
    bfloat16 weight under 1 MB, with a float32 copy multiplied in float32 ("float32", nn/linear.py's
    packed_product).

    Decoding a token is one matrix-vector product per layer, bound by how fast the weights stream from memory
    and by each call's fixed cost, and these differ by layout. Measured on an AMD EPYC (AVX-512 bf16), float32:
    the BLAS streamed 16.5 against 21.7 GB/s for 3072x768 transposed, 16.8 against 28.5 for GPT-2's 50257x768
    output layer, but 22.0 against 18.2 for 768x3072. In bfloat16, oneDNN re-packs a plain weight at every call:
    a packed copy took 67 us against 135 for 3072x768 and 11.5 against 15 for 512x128, and greedy decoding with
    every layer packed went from 53 to 96 tokens/s at GPT-2 small's size, from 393 to 605 at the character
    model's (one thread, the same tokens out). A small bfloat16 weight is faster still in float32, where a call
    costs less (Zen 4 EPYC, 2 threads: 128x128 5.7 us against 15 packed; 384x384 16 against 18; 1536x384 57
    against 25, streaming twice the bytes). Timed on a pool of such weights larger than the caches, or of 32 of
    them (transposing and float32 are only tried under and over 1 MB: smaller weights sit in the caches, where
    transposing was not seen to matter, and larger ones stream from memory, where twice the bytes cannot win),
    once per process, shape and dtype (tens of milliseconds); a layout must win by 5% to be chosen.
    $TRANSFORMERKIT_MATMUL, when it fixes the library, fixes float32's layout too (packed where products with a
    weight go through oneDNN, "onednn" or "split"; nn.Linear's for "default"), untimed: the layouts round
    differently."""
    from .nn.linear import can_pack_weights, decoding_copy, packed_product

    if _fixed_float32_library(dtype):
        return "packed" if matmul_choice() in ("onednn", "split") and can_pack_weights(dtype) else "linear"
    x, pool = _layout_pool(out_features, in_features, dtype)
    linear = torch.nn.functional.linear
    pools = {"linear": pool}
    runs = {"linear": lambda weight: linear(x, weight)}
    small = _weight_bytes(out_features, in_features, dtype) < _TRANSPOSE_MIN_BYTES
    if not small:
        pools["transposed"] = [weight.t().contiguous().t() for weight in pool]
        runs["transposed"] = runs["linear"]
    copies = ["packed"] if can_pack_weights(dtype) else []
    if small and dtype == torch.bfloat16:
        copies.append("float32")
    for layout in copies:
        pools[layout] = [decoding_copy(weight, layout) for weight in pool]
        runs[layout] = lambda copy: packed_product(x, copy)
    timed = {layout: _pool_pass(runs[layout], pools[layout]) for layout in pools}
    fastest = min(timed, key=timed.get)
    return fastest if timed[fastest] < 0.95 * timed["linear"] else "linear"


@lru_cache(maxsize=None)
def row_kernel_pays(out_features: int, in_features: int, dtype: torch.dtype, bias: bool) -> bool:
    """Whether one token through an (out, in) linear layer runs faster through a kernel compiled for its shape
    (nn/linear.py, row_kernel) than through the layout decoding_layout_choice picked, timed the same way (a pool
    past the caches) and winning by 5%. Measured on an AMD EPYC (AVX-512 bf16), 2 threads, float32, passes over
    64 MB of such weights: the kernel streamed 49.5 GB/s against oneDNN's packed copy's 33.3 for 768x768, 55.5
    against 37.7 for 768x3072, 54.0 against 47.6 for 3072x768, 57 against 32 for 384x384 (a call costs less),
    and was level for GPT-2's 50257x768 output layer (45.5); greedy decoding of one sequence went from 65 to 104
    tokens/s at GPT-2 small's size and from 490 to 673 at the character model's (the same tokens out). bfloat16
    gained less (oneDNN's bf16 kernels stream well): 140 to 143 and 635 to 680. Not tried where inductor cannot
    build kernels (no C++ compiler, or one that fails to build this kernel), for weights under ROW_KERNEL_MIN_BYTES,
    on the transposed layout (the kernel reads rows), or where $TRANSFORMERKIT_MATMUL fixes float32's library."""
    from .nn.linear import ROW_KERNEL_MIN_BYTES, decoding_copy, packed_product, row_kernel

    if (_weight_bytes(out_features, in_features, dtype) < ROW_KERNEL_MIN_BYTES or _fixed_float32_library(dtype)
            or compile_unavailable("cpu") is not None):
        return False
    layout = decoding_layout_choice(out_features, in_features, dtype)
    if layout == "transposed":
        return False
    try:
        kernel = row_kernel(out_features, in_features, dtype, bias, torch.get_num_threads())
    except Exception:  # a compiler inductor cannot build with (no OpenMP headers, say): no kernel, not a failed load
        return False
    x, pool = _layout_pool(out_features, in_features, dtype)
    biases = [torch.zeros(out_features, dtype=dtype)] if bias else []
    if layout in ("packed", "float32"):
        chosen = _pool_pass(lambda copy: packed_product(x, copy, *biases), [decoding_copy(w, layout) for w in pool])
    else:
        chosen = _pool_pass(lambda weight: torch.nn.functional.linear(x, weight, *biases), pool)
    return _pool_pass(lambda weight: kernel(x, weight, *biases), pool) < 0.95 * chosen


@lru_cache(maxsize=None)
def fused_attention_trains_faster(dtype: torch.dtype, slices: int, t_query: int, t_key: int, head_dim: int,
                                  mask: str | None) -> bool:
    """Whether PyTorch's fused CPU attention kernel (flash attention) runs a training step's attention, forward
    and backward, at least 10% faster than the written-out one (nn/attention.py) at this shape: `slices` (batch
    x heads) of `t_query` queries over `t_key` keys of width `head_dim`, with `mask` "causal", "padding" or None.
    Timed once per process and shape on random tensors: eight passes, forward and backward, 0.2-1 s on a 2-core
    AMD EPYC at the training shapes below.

    Measured (forward and backward, 2 threads), bfloat16 is where machines disagree: on a 2-core Xeon with AMX
    the fused kernel won from 256 keys on, while on an AMD EPYC with AVX-512 bf16 it lost at every length tried
    (causal, head width 64: 72 against 136 ms at 384 x 256 keys, 69 against 112 at 96 x 512, 123 against 136 at
    48 x 1,024; head width 48: 8 against 36 at 512 x 64); in a gpt2-small training step there (8 x 512 tokens)
    the written-out kernel took the step from 6.08 to 5.48 s. The 10% margin keeps the written-out kernel, whose
    weights can be inspected, where the two are close."""
    from .nn.attention import fused_attention, scaled_dot_product_attention

    generator = torch.Generator().manual_seed(0)  # the global one is left as it was: a training run's dropout
    q, k, v = (torch.randn(slices, 1, length, head_dim, generator=generator).to(dtype).requires_grad_()
               for length in (t_query, t_key, t_key))
    padding = torch.ones(slices, 1, 1, t_key, dtype=torch.bool) if mask == "padding" else None
    causal = mask == "causal"
    grad = torch.ones(slices, 1, t_query, head_dim, dtype=dtype)

    def written():
        torch.autograd.grad(scaled_dot_product_attention(q, k, v, padding, causal)[0], (q, k, v), grad)

    def fused():
        torch.autograd.grad(fused_attention(q, k, v, padding, causal), (q, k, v), grad)

    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return _fastest(fused, repeats=3) < 0.9 * _fastest(written, repeats=3)


def _fixed_float32_library(dtype: torch.dtype) -> bool:
    """Whether $TRANSFORMERKIT_MATMUL fixes how float32 multiplies (so nothing timed may choose it)."""
    return dtype == torch.float32 and matmul_choice() != "auto"


def _layout_pool(out_features: int, in_features: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One token's input (1, in) and enough (out, in) weights to pass the caches, as a decoding step reads them."""
    count = max(1, min(32, _LAYOUT_POOL_BYTES // _weight_bytes(out_features, in_features, dtype)))
    x = torch.full((1, in_features), 0.01, dtype=dtype)
    return x, [torch.full((out_features, in_features), 0.01, dtype=dtype) for _ in range(count)]


def _weight_bytes(out_features: int, in_features: int, dtype: torch.dtype) -> int:
    return out_features * in_features * torch.empty((), dtype=dtype).element_size()


def _pool_pass(run, pool: list) -> float:
    """The best time of a pass of `run` over every weight of `pool`, after a first pass that warms up (kernel
    selection, page faults). Passes repeat for at least 10 ms: a pass of small weights takes a fraction of a
    millisecond, and with 2 passes timed the choice between two layouts of a 256 x 128 weight flipped from one
    process to the next (AMD EPYC)."""
    times: list[float] = []
    while len(times) < 3 or (sum(times[1:]) < 0.01 and len(times) < 100):
        start = time.perf_counter()
        for weight in pool:
            run(weight)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def matmul_choice() -> str:
    """$TRANSFORMERKIT_MATMUL: "onednn", "split" or "default" fixes the float32 CPU matmul libraries (see
    float32_libraries), "auto" (or unset) times them (onednn_matmul_pays, onednn_weight_gradient_pays,
    decoding_layout_choice); checked when a command starts, so a typo is an error even where no float32 product
    would read it."""
    return environment_choice(MATMUL_ENV, FLOAT32_LIBRARIES + ("auto",)) or "auto"


def environment_choice(name: str, allowed: tuple[str, ...]) -> str | None:
    """The value of environment variable `name`, one of `allowed`, or None where it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if value and value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of {', '.join(allowed)}")
    return value or None


@lru_cache(maxsize=None)
def onednn_matmul_pays() -> bool:
    """Whether float32 matrix products run faster through oneDNN than through PyTorch's default CPU library
    (MKL) on this machine (nn/linear.py says why they can differ). Timed once per process on a product the size
    of a small model's training step (512 x 384 @ 384 x 1536: a few milliseconds); oneDNN must win by 10%.

    Where the two are close the answer can change from one process to the next with the machine's load
    (oneDNN limited to AVX2 took 0.72-0.89x MKL's time on an AMD EPYC), and the two round differently: two
    runs meant to be compared to the last digit set $TRANSFORMERKIT_MATMUL to fix it (float32_libraries)."""
    from .nn.linear import can_pack_weights, onednn_product

    choice = matmul_choice()
    if choice == "default" or not can_pack_weights():  # asked for, or a build without oneDNN's linear
        return False
    if choice in ("onednn", "split"):
        return True
    x, weight = torch.full((512, 384), 0.01), torch.full((1536, 384), 0.01)
    default = _fastest(lambda: torch.nn.functional.linear(x, weight), repeats=3)
    return _fastest(lambda: onednn_product(x, weight), repeats=3) < 0.9 * default


@lru_cache(maxsize=None)
def onednn_weight_gradient_pays() -> bool:
    """Whether a weight's gradient, g^T x, goes through oneDNN too, where its products with x do
    (onednn_matmul_pays). oneDNN reads its first operand row by row, so it first copies the transposed view g^T
    (rows x out: often the largest tensor of a layer's products); MKL reads the view in place. Timed once per
    process at 4,096 rows, where g^T and its copy (48 MB) pass a 32 MB cache as a training step's do, in about
    0.3 s at 2 threads; oneDNN must win by 10%.

    Machines differ. On the AMD EPYC of nn/linear.py's figures oneDNN's gradients took 10-13 ms against MKL's 22,
    copy included (one thread, 2048 x 384 @ 384 x 1536). On a 2-core AMD EPYC of family 25, model 17 (Zen 4),
    2 threads, 16,384 rows, they took 1.2-1.9x MKL's time (1536 x 384: 192 against 101 ms) while oneDNN's
    forward and input-gradient products were 6-18% faster than MKL's; this probe's oneDNN took 1.10-1.42x MKL's
    time there (four probes)."""
    from .nn.linear import onednn_product

    choice = matmul_choice()
    if choice in ("default", "split") or not onednn_matmul_pays():
        return False
    if choice == "onednn":
        return True
    grad, x = torch.full((4096, 1536), 0.01), torch.full((4096, 384), 0.01)
    default = _fastest(lambda: grad.t() @ x, repeats=3)
    return _fastest(lambda: onednn_product(grad.t(), x.t()), repeats=3) < 0.9 * default


def float32_libraries() -> str:
    """Where this process's float32 CPU training products run: "onednn" (all of them through oneDNN), "split"
    (x W^T and its input gradient through oneDNN, weight gradients through PyTorch's default library, MKL on
    x86) or "default" (all through the default library). The libraries add in different orders, so a run
    records it, and runs compared to the last digit fix it with $TRANSFORMERKIT_MATMUL."""
    if not onednn_matmul_pays():
        return "default"
    return "onednn" if onednn_weight_gradient_pays() else "split"


def choose_precision(requested: str = "auto", device: torch.device | str = "cpu", width: int = 256) -> Precision:
    """Resolve "auto" | "fp32" | "bf16" for this machine; $TRANSFORMERKIT_PRECISION overrides the request.

    auto picks bfloat16 only where the device has native bfloat16 matmul and a timed probe at the model's
    width confirms it beats float32; everywhere else float32.
    """
    override = environment_choice(PRECISION_ENV, PRECISIONS)
    if override:
        requested, source = override, f"{PRECISION_ENV}={override}"
    else:
        if requested not in PRECISIONS:
            raise ConfigError(f"precision: {requested!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
        source = "asked for"
    device = torch.device(device)
    if requested != "auto":
        return Precision(requested, source)
    if device.type not in ("cpu", "cuda"):
        return Precision("fp32", f"auto: no bfloat16 autocast choice is made for {device.type}")
    if not native_bf16(device):
        where = "this GPU" if device.type == "cuda" else "this processor"
        return Precision("fp32", f"auto: {where} has no native bfloat16 matmul (it would be emulated, slower)")
    speedup = bf16_speedup(width, device.type)
    if speedup < 1.15:
        return Precision("fp32", f"auto: native bfloat16, but only {speedup:.2f}x float32's speed at width {width}")
    return Precision("bf16", f"auto: native bfloat16 matmul, {speedup:.1f}x float32's speed at width {width}")


def choose_threads() -> tuple[int, str]:
    """Use the cores this process may run on (its CPU affinity), or OMP_NUM_THREADS when set; under torchrun
    the cores are shared among the processes on this machine."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        n, reason = int(env), "OMP_NUM_THREADS"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        n = max(1, cores // max(1, local))
        reason = f"{cores} usable core{'s' if cores != 1 else ''}" + (f" / {local} processes" if local > 1 else "")
    torch.set_num_threads(n)
    global _threads_reason
    _threads_reason = reason
    return n, reason


def threads_line() -> str:
    """"2 threads (2 usable cores)": what this process computes with, and why."""
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''} ({_threads_reason or 'set by the caller'})"


def describe_machine() -> str:
    """One line naming the processor (and GPU), the threads and the precision facts behind the choices."""
    parts = [cpu_name(), f"{os.cpu_count()} cores", f"{torch.get_num_threads()} threads",
             "native bf16" if native_bf16("cpu") else "no native bf16", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name())
    return ", ".join(parts)


def compile_unavailable(device_type: str = "cpu") -> str | None:
    """Why torch.compile cannot run here, or None: on the CPU, inductor builds its kernels with a C++ compiler."""
    import shutil

    if device_type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler for inductor (install g++)"
    return None


def require_compile(device_type: str) -> None:
    """A ConfigError (one line on the command line) where torch.compile cannot run, before it fails deep inside."""
    if reason := compile_unavailable(device_type):
        raise ConfigError(f"compile: torch.compile cannot run here: {reason}")


def check_device(name: str) -> str:
    """A device name this machine has (cpu, cuda, cuda:N, mps), or a ConfigError saying what it has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA GPU that PyTorch can use; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: this machine has no Apple GPU (MPS); use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name}: transformerkit runs on cpu, cuda or mps")
    return name


def best_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def tracing() -> bool:
    """Whether the code runs while inference/step_graph.py records a decoding step for inductor (traced_step)."""
    return _tracing


@contextmanager
def traced_step():
    """Mark the code run inside as a decoding step being recorded whole (see tracing)."""
    global _tracing
    before, _tracing = _tracing, True
    try:
        yield
    finally:
        _tracing = before


def keep_freed_memory() -> None:
    """Stop glibc from handing freed memory back to the OS.

    By default every allocation over a few MB is a fresh mmap, and memory freed at the top of the heap is
    trimmed; a training step then page-faults its activations back in every time (measured: 22,000 faults
    and a quarter of the step on a 2-core CPU). So blocks never come from mmap and the heap is not trimmed
    below 1 GB: freed memory stays for reuse. (Raising the mmap threshold instead stops at 32 MB, and
    attention's scores are larger: 64 x 6 x 256 x 256 floats is 100 MB at the shakespeare-char size. With the
    threshold at 32 MB against no mmap at all, on a 2-core AMD EPYC, one thread beside another 2-thread job,
    a shakespeare-char training step took 6.45 against 5.28 s in bfloat16 and 18.3 against 15.9 s in float32,
    page faults 2.2M against 0.94M over four steps, peak memory 7% higher; Multi30k's smaller steps did not
    change.)
    """
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass
    _tuned = True
