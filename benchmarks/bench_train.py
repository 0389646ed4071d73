"""Training throughput and model FLOP utilisation: ours against transformers, same sizes, batches and dtype.

    python benchmarks/bench_train.py [--sizes shakespeare-char,multi30k-de-en,gpt2-small] [--steps 4]

For each size, our model and transformers' GPT2LMHeadModel or MarianMTModel of the same dimensions train on the
same batch, in float32 and under bfloat16 autocast, measured back to back. MFU is model FLOPs per second over
the matmul ceiling measured in the same run (a large matmul in that dtype). Writes
benchmarks/results/bench_train.json (bench_train-cuda.json on a GPU).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import machine, print_table, write_json

import transformerkit as tk
from transformerkit.recipes import load_recipe
from transformerkit.runtime import keep_freed_memory
from transformerkit.tasks import prepare
from transformerkit.training.losses import linear_cross_entropy


def matmul_ceiling(dtype: torch.dtype, device: str) -> float:
    """FLOP/s of a large square matmul: the practical peak these numbers are judged against."""
    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decoder_pair(size: str, device: str):
    """(our model, its reference, a batch (B, T+1) of ids, FLOPs per token) for a decoder-only size."""
    import transformers

    if size == "shakespeare-char":
        config = tk.preset("gpt2-small").replace(vocab_size=65, d_model=384, n_layers=6, n_heads=6, d_ff=1536,
                                                 max_len=256, dropout=0.2, attention_dropout=0.0, activation="gelu",
                                                 pad_id=0, bos_id=0, eos_id=0)
        batch = torch.randint(0, 65, (64, 257))
    else:
        config = tk.preset("gpt2-small").replace(dropout=0.0, attention_dropout=0.0)
        batch = torch.randint(0, config.vocab_size, (8, 513))
    ours = tk.build_model(config)
    activation = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[config.activation]
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.d_model, n_layer=config.n_layers,
        n_head=config.n_heads, n_inner=config.d_ff, activation_function=activation, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.attention_dropout, bos_token_id=0, eos_token_id=0))
    T = batch.shape[1] - 1
    flops = 6 * _matmul_params(ours) + 12 * config.n_layers * config.d_model * T
    return ours, reference, batch.to(device), flops


def _matmul_params(model) -> int:
    """Parameters that take part in matmuls (every weight but embedding tables), the output layer included."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.lm_head.weight
    count = sum(p.numel() for p in model.parameters() if p.dim() == 2 and id(p) not in tables)
    return count + (head.numel() if id(head) in tables else 0)


def train_step_decoder(model, batch, ours: bool):
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if ours:
        hidden = model.decoder(inputs)
        loss = linear_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, None, targets.flatten())
        return loss / targets.numel()
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def seq2seq_pair(device: str):
    """Our multi30k-de-en model and a MarianMTModel of the same dimensions, with real Multi30k batches."""
    import transformers

    setup = prepare(load_recipe("multi30k-de-en"), run_dir="runs/bench")
    ours, c = setup.model, setup.model.config
    reference = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=c.vocab_size, d_model=c.d_model, encoder_layers=c.n_layers, decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads, encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff, activation_function="relu", dropout=c.dropout, attention_dropout=0.0,
        activation_dropout=0.0, max_position_embeddings=c.max_len, scale_embedding=True, pad_token_id=c.pad_id,
        decoder_start_token_id=c.start_id, eos_token_id=c.eos_id))
    batches = [b.to(device) for b in setup.data.batches(0)[:40]]
    tokens = sum(b.n_tokens for b in batches) / len(batches)
    S = sum(b.source.shape[1] for b in batches) / len(batches)
    attention = 12 * c.d_model * (c.n_layers * S + c.decoder_layers * 2 * S)  # self + cross, roughly
    return ours, reference, batches, 6 * _matmul_params(ours) + attention, tokens, setup.objective


def measure(step, batches, steps: int, model, bf16: bool, device: str) -> float:
    """Seconds per step after warm-up, AdamW and gradient clipping included."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = step(batches[i % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="shakespeare-char,multi30k-de-en,gpt2-small")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    keep_freed_memory()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ceilings = {dtype: matmul_ceiling(getattr(torch, name), device)
                for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16"))}
    rows = []
    for size in args.sizes.split(","):
        if size == "multi30k-de-en":
            ours, reference, batches, flops, tokens, objective = seq2seq_pair(device)
            def ours_step(b, objective=objective, ours=ours):
                loss, n = objective(ours, b)
                return loss / n
            ref_step = lambda b: _marian_loss(reference, b)  # noqa: E731
            ours_batches = ref_batches = batches
        else:
            ours, reference, batch, flops = decoder_pair(size, device)
            tokens = batch.shape[0] * (batch.shape[1] - 1)
            ours_step = lambda b: train_step_decoder(ours, b, True)  # noqa: E731
            ref_step = lambda b: train_step_decoder(reference, b, False)  # noqa: E731
            ours_batches = ref_batches = [batch]
        ours.to(device)
        reference.to(device)
        steps = args.steps if size != "gpt2-small" else max(2, args.steps // 2)
        for dtype in ("fp32", "bf16"):
            bf16 = dtype == "bf16"
            ours_seconds = measure(ours_step, ours_batches, steps, ours, bf16, device)
            ref_seconds = measure(ref_step, ref_batches, steps, reference, bf16, device)
            row = {"size": size, "dtype": dtype, "mode": "train", "ours_tokens_per_second": tokens / ours_seconds,
                   "reference_tokens_per_second": tokens / ref_seconds, "speedup": ref_seconds / ours_seconds,
                   "mfu": flops * tokens / ours_seconds / ceilings[dtype],
                   "reference_mfu": flops * tokens / ref_seconds / ceilings[dtype],
                   "flops_per_token": flops, "matmul_ceiling_flops": ceilings[dtype], "machine": machine(),
                   "reference": type(reference).__name__}
            rows.append(row)
            print(f"{size} {dtype}: ours {row['ours_tokens_per_second']:.0f} tok/s, reference "
                  f"{row['reference_tokens_per_second']:.0f} tok/s ({row['speedup']:.2f}x), MFU {row['mfu']:.1%}",
                  flush=True)
    print(f"on {machine()}; matmul ceiling fp32 {ceilings['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
          f"{ceilings['bf16'] / 1e9:.0f} GFLOP/s")
    print_table([(r["size"], r["dtype"], round(r["ours_tokens_per_second"]), round(r["reference_tokens_per_second"]),
                  f"{r['speedup']:.2f}x", f"{r['mfu']:.1%}", f"{r['reference_mfu']:.1%}") for r in rows],
                ("size", "dtype", "ours tok/s", "transformers tok/s", "speedup", "MFU", "reference MFU"))
    print(f"wrote {write_json('bench_train' + ('-cuda' if device == 'cuda' else '') + '.json', rows)}")


def _marian_loss(model, b):
    logits = model(input_ids=b.source, attention_mask=b.source_mask.long(), decoder_input_ids=b.target_in,
                   decoder_attention_mask=b.target_mask.long()).logits
    mask = b.target_mask
    return F.cross_entropy(logits[mask].float(), b.target_out[mask], label_smoothing=0.1)


if __name__ == "__main__":
    main()
