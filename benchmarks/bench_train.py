"""Training throughput and model FLOP utilisation: the Trainer's own step against transformers, same batches.

    python benchmarks/bench_train.py [--sizes shakespeare-char,multi30k-de-en,gpt2-small] [--steps 6]

Ours is `Trainer.step` on a recipe's prepared model, data and objective (our loss, our optimizer step, the
precision the trainer resolved); the reference is transformers' GPT2LMHeadModel or MarianMTModel of the same
dimensions, trained on the same batches with AdamW, clipping and the usual full-logits cross-entropy.
gpt2-small has no recipe of its own: it is the shakespeare-char recipe with GPT-2 small's dimensions and
vocabulary (50,257) on random token windows. float32 everywhere; bfloat16 only where this machine multiplies
it natively (runtime.native_bf16): emulated bf16 is 4-80x slower and nobody would train in it. MFU is model
FLOPs per second over the matmul rate of a large matmul in the same dtype, measured in the same run. Each row
also says how much of our step is spent in matmul kernels and the speedup a step of matmuls alone would reach
(matmul_seconds): where a target is missed, how much room work outside the matmuls has left.
Writes benchmarks/results/bench_train-<machine kind>.json, keeping the rows of sizes not measured in this run
and those of other processors (common.kept_rows); float32 rows record the libraries that multiplied.
"""

from __future__ import annotations

import argparse
import math
import re
import time

import torch
import torch.nn.functional as F
from common import RESULTS, kept_rows, machine, machine_facts, machine_kind, print_table, write_json

import transformerkit as tk
from transformerkit import runtime
from transformerkit.nn.linear import can_pack_weights, onednn_product
from transformerkit.recipes import load_recipe
from transformerkit.runtime import keep_freed_memory
from transformerkit.tasks import prepare
from transformerkit.tasks.language_model import WindowBatch
from transformerkit.training.trainer import Trainer

SIZES = {  # size -> (recipe, overrides)
    "shakespeare-char": ("shakespeare-char", ["model.dropout=0.0"]),
    "multi30k-de-en": ("multi30k-de-en", ["model.dropout=0.0"]),
    "gpt2-small": ("shakespeare-char", ['model.preset="gpt2-small"', "model.d_model=768", "model.n_layers=12",
                                        "model.n_heads=12", "model.d_ff=3072", "model.max_len=512",
                                        "model.dropout=0.0", "data.context=512", "data.batch_size=8"]),
}
GPT2_VOCAB = 50257


def matmul_ceiling(dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul on this CPU, through the faster of PyTorch's default library (MKL for
    float32) and oneDNN: the practical peak these numbers are judged against (nn/linear.py: on AMD the two
    differ by 2x in float32)."""
    n, reps = 2048, 5
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    products = [lambda: a @ b]
    if can_pack_weights(dtype):
        products.append(lambda: onednn_product(a, b))
    best = math.inf
    for product in products:
        for _ in range(2):
            product()
        start = time.perf_counter()
        for _ in range(reps):
            product()
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


def our_trainer(size: str, precision: str, run_dir: str):
    """(the Trainer of the size's recipe in `precision`, its model, its batches, the objective's label
    smoothing)."""
    name, overrides = SIZES[size]
    recipe = load_recipe(name, [*overrides, f'training.precision="{precision}"', "training.clip_norm=1.0"])
    setup = prepare(recipe, run_dir=run_dir)
    model, c = setup.model, setup.model.config
    if size == "gpt2-small":  # GPT-2's vocabulary, on random windows of it
        model = tk.build_model(c.replace(vocab_size=GPT2_VOCAB))
        generator = torch.Generator().manual_seed(0)
        batches = [WindowBatch(torch.randint(0, GPT2_VOCAB, (8, 513), generator=generator)) for _ in range(3)]
    elif c.family == "decoder":
        batches = [setup.data.batch(0, i) for i in range(3)]
    else:
        batches = list(setup.data.batches(0)[:40])
    trainer = Trainer(model, setup.data, setup.objective, setup.train_config, run_dir, progress_bar=False)
    smoothing = getattr(setup.objective, "label_smoothing", 0.0)
    return trainer, model, batches, smoothing


def model_flops(model, batch, params: tuple[int, int]) -> float:
    """The FLOPs a training step on `batch` needs (forward + backward = 3 x forward), counted on real tokens:
    6 x the matmul parameters each token passes through (`params`, from matmul_params), plus attention's score
    and value products. An encoder-decoder's source tokens pass through the encoder and the cross-attention's
    key and value projections, its target tokens through the rest of the decoder and the output layer, so each
    side is counted with its own parameters (counting every parameter for every token read 126% MFU). Checked
    against torch's FlopCounterMode on unpadded batches: equal."""
    c, (total, source_side) = model.config, params
    if isinstance(batch, WindowBatch):
        B, T = batch.ids.shape[0], batch.ids.shape[1] - 1
        return B * T * (6 * total + 12 * c.n_layers * c.d_model * T)
    s, t = batch.source_mask.sum(1).double(), batch.target_mask.sum(1).double()  # (B,) real lengths
    attention = c.n_layers * (s * s).sum() + c.decoder_layers * (t * t + t * s).sum()
    return float(6 * (source_side * s.sum() + (total - source_side) * t.sum()) + 12 * c.d_model * attention)


def matmul_params(model) -> tuple[int, int]:
    """(parameters that take part in matmuls: every weight but embedding tables, the output layer included;
    those of them that an encoder-decoder's source tokens pass through)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.output_layer().weight
    weights = [(name, p) for name, p in model.named_parameters() if p.dim() == 2 and id(p) not in tables]
    total = sum(p.numel() for _, p in weights) + (head.numel() if id(head) in tables else 0)
    source_side = sum(p.numel() for name, p in weights
                      if name.startswith("encoder.") or re.search(r"cross_attn\.[kv]_proj", name))
    return total, source_side


def reference_model(config):
    """transformers' model of the same dimensions: GPT2LMHeadModel for a decoder, MarianMTModel otherwise."""
    import transformers

    c = config
    if c.family == "decoder":
        activation = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[c.activation]
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.max_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
            n_inner=c.d_ff, activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0))
    return transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=c.vocab_size, d_model=c.d_model, encoder_layers=c.n_layers, decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads, encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff, activation_function="relu", dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, max_position_embeddings=c.max_len, scale_embedding=True, pad_token_id=c.pad_id,
        decoder_start_token_id=c.start_id, eos_token_id=c.eos_id))


def reference_loss(model, batch, label_smoothing: float):
    if isinstance(batch, WindowBatch):
        logits = model(input_ids=batch.ids[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.ids[:, 1:].flatten())
    logits = model(input_ids=batch.source, attention_mask=batch.source_mask.long(),
                   decoder_input_ids=batch.target_in, decoder_attention_mask=batch.target_mask.long()).logits
    mask = batch.target_mask
    return F.cross_entropy(logits[mask].float(), batch.target_out[mask], label_smoothing=label_smoothing)


def seconds_per_step(steps: dict, batches, n: int) -> dict[str, float]:
    """Seconds per step of each of `steps` (name -> step(batch)) after two untimed warm-up steps each, the
    steps taken in turn (ours, then the reference, then ours ...) so that a machine whose speed drifts from
    minute to minute slows both alike."""
    for step in steps.values():
        for i in range(2):
            step(batches[i % len(batches)])
    seconds = dict.fromkeys(steps, 0.0)
    for i in range(n):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batches[(i + 2) % len(batches)])
            seconds[name] += time.perf_counter() - start
    return {name: total / n for name, total in seconds.items()}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")


def matmul_seconds(step, batch) -> float:
    """Seconds of one step spent inside matmul kernels, from the profiler's self time of the matmul ops (each
    milliseconds long, so the profiler's own cost per op is noise). A step made of these alone, every other op
    free, would take this long: the reference's step time over it bounds the speedup any work outside the
    matmuls can buy, with the same matmul library. PyTorch's fused attention counts as outside (its products and
    its softmax are one op), so where it runs (float32 beyond 64 keys: the shakespeare-char and gpt2-small rows),
    the bound is looser."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6


def reference_step(model, precision: str, label_smoothing: float):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = reference_loss(model, batch, label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="shakespeare-char,multi30k-de-en,gpt2-small")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    keep_freed_memory()
    precisions = ["fp32", "bf16"] if runtime.native_bf16("cpu") else ["fp32"]
    ceilings = {p: 0.0 for p in precisions}
    rows = []
    for size in args.sizes.split(","):
        steps = args.steps if size != "gpt2-small" else max(2, args.steps // 2)
        for precision in precisions:
            trainer, model, batches, smoothing = our_trainer(size, precision, f"runs/bench-train-{size}")
            timed_batches = [batches[(i + 2) % len(batches)] for i in range(steps)]  # as seconds_per_step takes them
            tokens = sum(b.n_tokens for b in timed_batches) / steps
            params = matmul_params(model)
            flops = sum(model_flops(model, b, params) for b in timed_batches) / steps
            reference = reference_model(model.config)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            rate = matmul_ceiling(dtype)  # probed before and after the row's timing, the better kept: the VM drifts
            timed = seconds_per_step({"ours": lambda b: trainer.step([b]),
                                      "reference": reference_step(reference, precision, smoothing)}, batches, steps)
            in_matmuls = matmul_seconds(lambda b: trainer.step([b]), batches[2 % len(batches)])
            rate = max(rate, matmul_ceiling(dtype))
            ceilings[precision] = max(ceilings[precision], rate)
            ours, ref = timed["ours"], timed["reference"]
            row = {"size": size, "dtype": precision, "mode": "train", "ours_tokens_per_second": tokens / ours,
                   "reference_tokens_per_second": tokens / ref, "speedup": ref / ours,
                   "mfu": flops / ours / rate, "reference_mfu": flops / ref / rate, "flops_per_token": flops / tokens,
                   "ours_matmul_share": in_matmuls / ours, "speedup_if_only_matmuls": ref / in_matmuls,
                   "matmul_ceiling_flops": rate, "reference": type(reference).__name__,
                   **machine_facts(), "precision": precision,
                   **({"fp32_matmul": runtime.float32_libraries()} if precision == "fp32" else {})}
            rows.append(row)
            print(f"{size} {precision}: ours {row['ours_tokens_per_second']:.0f} tok/s, reference "
                  f"{row['reference_tokens_per_second']:.0f} tok/s ({row['speedup']:.2f}x), MFU {row['mfu']:.1%}",
                  flush=True)
    print(f"on {machine()}; best matmul rate " + ", ".join(f"{p} {c / 1e9:.0f} GFLOP/s" for p, c in ceilings.items()))
    print_table([(r["size"], r["dtype"], round(r["ours_tokens_per_second"]), round(r["reference_tokens_per_second"]),
                  f"{r['speedup']:.2f}x", f"{r['mfu']:.1%}", f"{r['reference_mfu']:.1%}",
                  f"{r['ours_matmul_share']:.0%}", f"{r['speedup_if_only_matmuls']:.2f}x") for r in rows],
                ("size", "dtype", "ours tok/s", "transformers tok/s", "speedup", "MFU", "reference MFU",
                 "ours in matmuls", "speedup bound"))
    name = f"bench_train-{machine_kind()}.json"
    print(f"wrote {write_json(name, kept_rows(RESULTS / name, rows) + rows)}")


if __name__ == "__main__":
    main()
