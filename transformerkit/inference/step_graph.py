"""A decoding step compiled whole: one graph from token ids to logits, no Python between its operations.

A small model's decoding step is a few hundred small operations (norms, projections, a cache write, attention,
residual adds, for every layer), and each one dispatched from Python costs a few microseconds before it does
any arithmetic: for a 6-layer model of width 384 that is most of a step. Here the model's own `step` is
recorded with make_fx and handed to inductor, which fuses the small operations into a few loops. The graph is
called directly, not through torch.compile, whose guards are checked at every call. What keeps one graph
serving many steps:
- the KV cache is written in place at a position passed in as a tensor (KVCache.write), and positions come
  from the decoding state's count of real tokens per row, also a tensor;
- attention reads the cache up to the next multiple of CACHE_QUANTUM past the positions written, the rest
  hidden by the key mask: a shape that changes every 64 steps, not every step, and no read of positions far
  past those written (at batch 8 and 256 positions, a shakespeare-char layer's cache is as large as its weights).
Beam search with graphs moves no keys or values when it reorders its beams: the state keeps the cache row that holds
each beam's every position (DecodeState.follow_rows), and the graph reads each position from there (KVCache.write),
a gather done as attention reads; 1.2-1.4x faster beam 5 at the shakespeare-char size, the same tokens.
Two things stay as the eager step has them, measured faster than inductor's own code here: each product is one
call of the kernel Linear chose at load time (nn/linear.py, decoding_product; a one-row product is the row
kernel's expression, which inductor fuses, or for a weight of 4 MB and up the row kernel itself, called whole:
ROW_OPAQUE_MIN_BYTES), and attention is written out (with grouped-query heads, the fused kernel).

In float32 the tokens are the eager step's. In bfloat16 the graph rounds less often (inductor computes each fused
chain of operations in float32 and rounds once), so where two tokens are near-tied the choice can differ.

Measured on a 2-core AMD EPYC (AVX-512 bf16), benchmarks/bench_decode.py, eager -> compiled:
greedy batch 1 at the shakespeare-char size 561 -> 1,030 tokens/s in float32 and 607 -> 1,485 in bfloat16,
gpt2-small 73 -> 83 and 90 -> 126; at batch 8 the character model 2,371 -> 2,959 and 2,269 -> 3,322; beam 5 at
batch 1 288 -> 426 and 255 -> 459.

A graph is specialised to its shapes (batch, cache length, source length), dtype and thread count, and costs
5-20 s to compile (once per process; less with inductor's cache on disk), so while a model has graphs searches
keep their batch whole (rows that end are carried to the last step, as transformers' generate carries them)
and cache and source lengths are rounded up (CACHE_QUANTUM, SOURCE_QUANTUM). The products read the packed weight
copies Linear held when the step was traced: after changing the weights, compile the steps again.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import runtime
from ..nn.kv_cache import DecodeState, KVCache

CACHE_QUANTUM = 64  # cache lengths are rounded up to a multiple of this, so nearby lengths share a graph
SOURCE_QUANTUM = 16  # and an encoder-decoder's source lengths to a multiple of this


class StepGraphs:
    """The compiled steps of one model, one per shape met; `model.step` calls them for one token per row."""

    def __init__(self, model: nn.Module):
        self.stepper = _Step(model)
        named = [*model.named_parameters(), *model.named_buffers()]
        self.names = [f"model.{name}" for name, _ in named]
        self.tensors = [tensor for _, tensor in named]  # parameters as objects: a cast changes their data, seen
        self.graphs: dict[tuple, Callable] = {}

    @staticmethod
    def cache_length(length: int) -> int:
        """The cache length a state for `length` positions gets: rounded up (CACHE_QUANTUM)."""
        return -(-length // CACHE_QUANTUM) * CACHE_QUANTUM

    @staticmethod
    def pad_source(memory: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The encoder output (B, S, C) and its mask (B, S) padded with masked positions to a multiple of
        SOURCE_QUANTUM, so that sources of nearby lengths share a graph."""
        B, S, _ = memory.shape
        extra = -S % SOURCE_QUANTUM
        if extra == 0:
            return memory, mask
        mask = mask if mask is not None else torch.ones(B, S, dtype=torch.bool, device=memory.device)
        return F.pad(memory, (0, 0, 0, extra)), F.pad(mask, (0, extra))  # (B, S + extra, C), padding False

    @staticmethod
    def serves(ids: Tensor, state: DecodeState, mask: Tensor | None) -> bool:
        """Whether a step is one the graphs run: one token a row, none of it padding, on the CPU (elsewhere
        torch.compile's own graphs serve), and not the step being traced."""
        return (ids.shape[1] == 1 and mask is None and state.traced_position is None and ids.device.type == "cpu"
                and not torch.is_grad_enabled())

    def __call__(self, ids: Tensor, state: DecodeState) -> Tensor:
        """ids (B, 1) -> logits (B, V), the state advanced by one position, as model.step would."""
        state.check_room(1)  # here: the traced step's own check ran once, at the length it was traced at
        if state.key_mask is None:
            state.mask_keys(ids.device)
        inputs = _state_inputs(ids, state)
        visible = self.cache_length(state.length + 1)  # the positions attention reads: those written, rounded up
        key = (tuple((tuple(t.shape), t.dtype) for t in inputs), visible, self.tensors[0].dtype,
               torch.get_num_threads())  # the inputs also tell whether the state follows rows (origin)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._compile(ids, state, visible)
        position = torch.tensor([state.length], device=ids.device)
        (logits,) = graph(*self.tensors, position, *inputs)
        state.length += 1
        return logits

    def _compile(self, ids: Tensor, state: DecodeState, visible: int) -> Callable:
        from torch._inductor import compile as inductor_compile
        from torch.fx.experimental.proxy_tensor import make_fx

        n_params, n_layers = len(self.tensors), len(state.caches)
        has_memory_mask, follows_rows = state.memory_mask is not None, state.origin is not None

        def step(*tensors: Tensor) -> tuple[Tensor]:
            params = dict(zip(self.names, tensors[:n_params]))
            position, ids, key_mask, n_real, *rest = tensors[n_params:]
            origin = rest.pop(0) if follows_rows else None
            # the caller's tensors themselves, so that writes reach them; attention reads the first `visible`
            caches = [KVCache.holding(k, v, visible, None if origin is None else origin[:, :visible])
                      for k, v in zip(rest[:n_layers], rest[n_layers:2 * n_layers])]
            memory = rest[2 * n_layers:]
            memory_mask = memory.pop() if has_memory_mask else None
            memory_kv = list(zip(memory[::2], memory[1::2])) or None
            traced = DecodeState(caches, memory_kv, memory_mask, state.length, key_mask[:, :visible], n_real,
                                 traced_position=position)
            return (torch.func.functional_call(self.stepper, params, (ids, traced)),)

        # traced on copies: tracing runs the step, which writes into the cache and the key mask
        examples = [*self.tensors, torch.tensor([state.length], device=ids.device),
                    *(t.clone() for t in _state_inputs(ids, state))]
        with torch.inference_mode(False), torch.no_grad(), runtime.traced_step():
            return inductor_compile(make_fx(step)(*examples), examples)


class _Step(nn.Module):
    """The model's step as a module's forward, which torch.func.functional_call calls with the weights given."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, state: DecodeState) -> Tensor:
        return self.model.step(ids, state)


def _state_inputs(ids: Tensor, state: DecodeState) -> list[Tensor]:
    """The tensors a step reads and writes, in the graph's order: ids, key mask, real-token counts, the cache row
    of each position (origin, where the state keeps it), the caches' keys then values, the cross-attention keys
    and values, the source mask."""
    memory = [t for pair in state.memory_kv or [] for t in pair]
    mask = [state.memory_mask] if state.memory_mask is not None else []
    origin = [state.origin] if state.origin is not None else []
    return [ids, state.key_mask, state.n_real, *origin, *(c.k for c in state.caches), *(c.v for c in state.caches),
            *memory, *mask]


def compile_steps(model: nn.Module) -> None:
    """Give `model` compiled decoding steps (StepGraphs): its `step` runs them from now on, where they serve
    (`model.step_graphs = None` turns them off). For a float model on the CPU: `generate --compile`; GPUs and
    quantized models get compiled blocks instead (nn/block.py, compile_blocks), measured there, not here."""
    model.step_graphs = StepGraphs(model)
