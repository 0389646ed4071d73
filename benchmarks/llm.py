"""The LLM workflow's numbers, measured side by side in one run.

    python benchmarks/llm.py [--shakespeare-run RUN] [--skip-training]   # RUN: a finished shakespeare-char run

1. Training throughput at the shakespeare-char size (10.7M parameters, batch 64 x 256): the Trainer's own step
   against a nanoGPT-style eager model (written out below, as nanoGPT's model.py does it) on the same batches,
   in float32, and in bfloat16 where this machine multiplies it natively (with the validation loss of both
   after the same tokens).
2. The shakespeare run's best validation loss and training time (from RUN's metrics), when given, and its
   curves (benchmarks/results/shakespeare-<machine kind>.png).
3. SmolLM2-135M-Instruct through `generate_ids` in each quantize mode (none = exact float32, int8, gguf = the
   file's own 4-bit blocks, gguf+compile = the same with its blocks compiled, as `generate --compile` does):
   decode tokens/s for 128 greedy tokens (the median of three runs, each without its prefill, as llama-bench's
   tg128 counts them), prompt tokens/s at 500 tokens, the loaded tensors' bytes, the
   perplexity of held-out text (the end of Tiny Shakespeare) and the logits' distance from float32;
   transformers' float32 generate on the same file and llama.cpp's `llama-bench -p 500 -n 128` on the same file
   and threads (built by ../shared/tools/build-llama-cpp.sh), each run in turn with ours, three rounds, the
   ratios taken round by round; the memory-bandwidth ceiling (bytes of weights
   per token over the measured copy rate); decode speed at 100, 1,000 and 4,000 tokens of context.
Writes benchmarks/results/llm-<machine kind>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, copy_bandwidth, machine_facts, machine_kind, print_table, write_json
from torch import nn

import transformerkit as tk
from transformerkit import runtime
from transformerkit.data.datasets import data_dir
from transformerkit.inference.generate import GenerationOptions, generate_ids
from transformerkit.nn.block import compile_blocks
from transformerkit.recipes import load_recipe
from transformerkit.runtime import keep_freed_memory, threads_line
from transformerkit.tasks import prepare
from transformerkit.viz import plot_training

BUILD_LLAMA = Path(__file__).resolve().parents[2] / "shared" / "tools" / "build-llama-cpp.sh"


class NanoGPT(nn.Module):
    """The reference: nanoGPT's GPT (pre-norm, GELU, learned positions, tied head, fused qkv, flash attention)."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, context: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln_1=nn.LayerNorm(d), c_attn=nn.Linear(d, 3 * d), c_proj=nn.Linear(d, d), ln_2=nn.LayerNorm(d),
            c_fc=nn.Linear(d, 4 * d), mlp_proj=nn.Linear(4 * d, d))) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        x = F.dropout(self.wte(ids) + self.wpe(torch.arange(T, device=ids.device)), self.dropout, self.training)
        for b in self.blocks:
            q, k, v = b["c_attn"](b["ln_1"](x)).split(x.shape[-1], dim=2)
            q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
            x = x + F.dropout(b["c_proj"](y.transpose(1, 2).reshape(B, T, -1)), self.dropout, self.training)
            x = x + F.dropout(b["mlp_proj"](F.gelu(b["c_fc"](b["ln_2"](x)))), self.dropout, self.training)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))


def train_throughput(recipe: dict, precision: str, steps: int = 12) -> dict[str, float]:
    """Training tokens/s of the Trainer's own step and of nanoGPT's model on the same batches, in `precision`."""
    from transformerkit.training.trainer import Trainer

    recipe = {**recipe, "training": {**recipe["training"], "precision": precision}}
    setup = prepare(recipe, run_dir="runs/bench-llm")
    c = setup.model.config
    batches = [setup.data.batch(0, i) for i in range(steps + 2)]
    trainer = Trainer(setup.model, setup.data, setup.objective, setup.train_config, "runs/bench-llm",
                      progress_bar=False)
    torch.manual_seed(0)
    nanogpt = NanoGPT(c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.max_len, c.dropout).train()
    optimizer = torch.optim.AdamW(nanogpt.parameters(), lr=1e-4)

    def reference(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = nanogpt(batch.ids[:, :-1], batch.ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nanogpt.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sides = {"ours": lambda b: trainer.step([b]), "nanogpt": reference}
    seconds = dict.fromkeys(sides, 0.0)
    for i, batch in enumerate(batches):  # step by step in turn, so that both see the same machine (it drifts)
        for name, step in sides.items():
            start = time.perf_counter()
            step(batch)
            seconds[name] += (time.perf_counter() - start) if i >= 2 else 0.0  # two warm-up steps each
    return {name: steps * batches[0].n_tokens / seconds[name] for name in sides}


def loss_after_same_tokens(recipe: dict, steps: int, run_root: Path) -> dict[str, float]:
    """Validation loss of float32 and bfloat16 training after the same batches (same seed)."""
    from transformerkit.tasks.run import train_recipe

    out = {}
    for dtype in ("fp32", "bf16"):
        run = run_root / f"tokens-{dtype}-{time.strftime('%H%M%S')}"
        overrides = {"max_steps": steps, "eval_every": steps, "bf16": dtype == "bf16", "schedule": "cosine"}
        r = json.loads(json.dumps(recipe))
        r["training"].update(overrides)
        r["training"].pop("max_minutes", None)
        r.setdefault("sample", {})["tokens"] = 0
        train_recipe(r, run, "cpu", progress_bar=False)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "val_loss" in r]
        out[dtype] = evals[-1]["val_loss"]
    return out


def timed_generate(model, prompt: list[int], new_tokens: int) -> float:
    """Seconds of `generate_ids` (the product's path) for exactly `new_tokens` greedy tokens after `prompt`."""
    options = GenerationOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    start = time.perf_counter()
    out = generate_ids(model, [prompt], options)[0]
    seconds = time.perf_counter() - start
    assert len(out) == new_tokens
    return seconds


def decode_rate(model, prompt: list[int], new_tokens: int) -> float:
    """Decode tokens/s after `prompt`, timed inside one generation from the first new token (which ends the
    prefill) to the last, with `generate_ids`' own per-token callback: no prefill, and no difference of two
    runs that the machine's drift can make negative."""
    stamps: list[float] = []
    options = GenerationOptions(max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1)
    generate_ids(model, [prompt], options, on_token=lambda row, token: stamps.append(time.perf_counter()))
    assert len(stamps) == new_tokens + 1
    return new_tokens / (stamps[-1] - stamps[0])


class _Arrivals:
    """A transformers streamer that only notes when tokens arrive: the first call brings the prompt, then one
    call per new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_decode_rate(hf, ids: torch.Tensor, new_tokens: int) -> float:
    """transformers' greedy generate after `ids` (1, T), timed as `decode_rate` times ours."""
    arrivals = _Arrivals()
    hf.generate(ids, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, do_sample=False,
                pad_token_id=0, streamer=arrivals)
    assert len(arrivals.times) == new_tokens + 2
    return new_tokens / (arrivals.times[-1] - arrivals.times[1])


def load_transformers(path: Path):
    """transformers' float32 model on the same GGUF file (dequantized, as transformers loads it)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def perplexity(model, ids: list[int], window: int = 512) -> float:
    """exp(mean next-token cross-entropy) over `ids`, in windows of `window` tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]])
            logits = model(chunk[:, :-1]).float()
            total += F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(total / count)


def llama_bench(gguf: Path, threads: int, prompt: int = 500, new_tokens: int = 128) -> dict[str, float] | None:
    """llama.cpp's own numbers on the same file and threads: `llama-bench -p 500 -n 128` (built by
    ../shared/tools/build-llama-cpp.sh, cached); None where it cannot be built."""
    built = subprocess.run(["bash", str(BUILD_LLAMA), "llama-bench"], capture_output=True, text=True)
    if built.returncode != 0:
        print(f"llama.cpp could not be built; it is left out:\n{built.stderr[-1000:]}")
        return None
    folder = Path(built.stdout.strip().splitlines()[-1])
    run = subprocess.run([str(folder / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(prompt),
                          "-n", str(new_tokens), "-o", "json"], capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(folder)})
    if run.returncode != 0:
        print(f"llama-bench failed; it is left out:\n{run.stderr[-1000:]}")
        return None
    rows = json.loads(run.stdout)
    rate = {("prompt" if r["n_prompt"] else "decode"): r["avg_ts"] for r in rows}
    return {"llama_cpp_decode_tokens_per_second": rate["decode"],
            "llama_cpp_prompt_tokens_per_second": rate["prompt"], "llama_cpp_build": rows[0].get("build_commit")}


def smollm2(new_tokens: int = 128) -> dict:
    """SmolLM2-135M-Instruct: ours in each quantize mode against float32, transformers and llama.cpp."""
    from transformerkit.loading import resolve_alias
    from transformerkit.quantize import weight_bytes

    path = resolve_alias("smollm2")
    threads = torch.get_num_threads()
    held_out = (data_dir() / "tinyshakespeare" / "input.txt").read_text()[-6000:]  # text none of the prompts use
    long_text = "The lighthouse keeper counted the waves. " * 600
    modes, float_logits, best, best_model = {}, None, None, None
    for mode in ("none", "int8", "gguf", "gguf+compile"):
        quantize = mode.removesuffix("+compile")
        model = tk.load("smollm2", device="cpu", quantize=None if quantize == "none" else quantize)
        tokenizer = model.tokenizer
        prompt = tokenizer.encode("<|im_start|>user\nTell me a long story about a lighthouse keeper.<|im_end|>\n"
                                  "<|im_start|>assistant\n").ids
        compiled = mode.endswith("+compile")
        if compiled:
            compile_blocks(model)  # what `generate --compile` does: the first call compiles (timed below)
        probe = torch.tensor([tokenizer.encode("The capital of France is Paris, and the capital of Italy is").ids])
        with torch.no_grad():
            logits = model(probe).float()
        float_logits = logits if float_logits is None else float_logits
        long_prompt = tokenizer.encode(long_text).ids
        warm_up = timed_generate(model, prompt, 4)  # first-call allocations, kernel layouts (and compiling:
        warm_up += timed_generate(model, long_prompt[:500], 1) if compiled else 0.0  # both prefill shapes)
        timed_generate(model, prompt, new_tokens + 1)  # the first long run after loading is slower: not timed
        ttft = timed_generate(model, long_prompt[:500], 1)
        modes[mode] = {
            "decode_tokens_per_second": statistics.median(decode_rate(model, prompt, new_tokens) for _ in range(3)),
            "prompt_tokens_per_second": 500 / ttft, "ttft_500_seconds": ttft,
            "weight_bytes": weight_bytes(model),
            "perplexity": perplexity(model, tokenizer.encode(held_out).ids),
            "logits_max_abs_diff": (logits - float_logits).abs().max().item(),
            "logits_mean_abs_diff": (logits - float_logits).abs().mean().item(),
            "same_argmax": bool((logits.argmax(-1) == float_logits.argmax(-1)).all()),
            **({"compile_seconds": warm_up} if compiled else {}),
        }
        if quantize == "gguf":
            modes[mode]["decode_tokens_per_second_by_context"] = {
                str(n): decode_rate(model, long_prompt[:n], 32) for n in (100, 1000, 4000)}
        print(f"  ours, quantize={mode}: {modes[mode]['decode_tokens_per_second']:.1f} tokens/s, "
              f"perplexity {modes[mode]['perplexity']:.3f}", flush=True)
        if best is None or modes[mode]["decode_tokens_per_second"] > modes[best]["decode_tokens_per_second"]:
            best, best_model = mode, model  # kept for the rounds against the references
        del model
    rounds = side_by_side(best_model, path, prompt, long_prompt[:500], new_tokens, threads)
    float_bytes, bandwidth = modes["none"]["weight_bytes"], copy_bandwidth()
    every_round = set.intersection(*(set(r) for r in rounds))  # llama.cpp may fail in one round: then left out
    median = {key: statistics.median(r[key] for r in rounds) for key in every_round if key.endswith("per_second")}
    return {"smollm2_decode_tokens_per_second": median["decode_tokens_per_second"], "smollm2_quantize": best,
            "smollm2_threads": threads, "smollm2_weight_bytes": modes[best]["weight_bytes"],
            "smollm2_file_bytes": path.stat().st_size, "smollm2_modes": modes,
            "hf_decode_tokens_per_second": median["hf_decode_tokens_per_second"],
            "llama_cpp_decode_tokens_per_second": median.get("llama_cpp_decode_tokens_per_second"),
            "llama_cpp_prompt_tokens_per_second": median.get("llama_cpp_prompt_tokens_per_second"),
            "side_by_side_rounds": rounds,
            "decode_vs_transformers": statistics.median(
                r["decode_tokens_per_second"] / r["hf_decode_tokens_per_second"] for r in rounds),
            **({"decode_vs_llama_cpp": statistics.median(
                r["decode_tokens_per_second"] / r["llama_cpp_decode_tokens_per_second"] for r in rounds),
                "prompt_vs_llama_cpp": statistics.median(
                r["prompt_tokens_per_second"] / r["llama_cpp_prompt_tokens_per_second"] for r in rounds)}
               if "llama_cpp_decode_tokens_per_second" in median else {}),
            "bandwidth_ceiling_tokens_per_second": bandwidth / modes[best]["weight_bytes"],
            "float32_bandwidth_ceiling_tokens_per_second": bandwidth / float_bytes,
            "ttft_500_seconds": 500 / median["prompt_tokens_per_second"],
            "prompt_tokens_per_second": median["prompt_tokens_per_second"],
            "decode_tokens_per_second_by_context": modes[best].get("decode_tokens_per_second_by_context",
                                                                   modes["gguf"]["decode_tokens_per_second_by_context"])}


def side_by_side(model, path: Path, prompt: list[int], long_prompt: list[int], new_tokens: int, threads: int,
                 rounds: int = 3) -> list[dict]:
    """Ours (our best mode), transformers and llama.cpp in turn, `rounds` times: each round's three see the
    same machine. On a shared VM the speed drifts by up to 2x within minutes (llama-bench measured 32.5 and
    52.7 decode tokens/s ten minutes apart in one run), so references timed before or after ours would not
    compare; the ratios are taken round by round."""
    hf = load_transformers(path)
    ids = torch.tensor([prompt])
    results = []
    with torch.no_grad():
        hf_decode_rate(hf, ids, new_tokens)  # warm-up
        for _ in range(rounds):
            row = {"decode_tokens_per_second": decode_rate(model, prompt, new_tokens),
                   "prompt_tokens_per_second": len(long_prompt) / timed_generate(model, long_prompt, 1),
                   "hf_decode_tokens_per_second": hf_decode_rate(hf, ids, new_tokens)}
            row.update(llama_bench(path, threads) or {})
            print(f"  round: {row}", flush=True)
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare-run", help="a finished shakespeare-char (or -hour) run folder")
    parser.add_argument("--tokens-steps", type=int, default=200, help="steps for the fp32/bf16 loss comparison")
    parser.add_argument("--skip-training", action="store_true", help="SmolLM2 and llama.cpp only")
    args = parser.parse_args()
    keep_freed_memory()
    runtime.choose_threads()
    native = runtime.native_bf16("cpu")
    result: dict = {**machine_facts()}
    rows = []
    if not args.skip_training:
        recipe = load_recipe("shakespeare-char")
        for precision in ["fp32", "bf16"] if native else ["fp32"]:  # emulated bf16 trains nobody's model
            speeds = train_throughput(recipe, precision)
            result[f"train_tokens_per_second_{precision}"] = speeds["ours"]
            result[f"reference_train_tokens_per_second_{precision}"] = speeds["nanogpt"]
            rows.append((f"train tok/s {precision}", round(speeds["ours"]), round(speeds["nanogpt"])))
        auto = "bf16" if native and runtime.choose_precision("auto", "cpu", 384).name == "bf16" else "fp32"
        result["precision"] = auto
        result["train_tokens_per_second"] = result[f"train_tokens_per_second_{auto}"]
        result["reference_train_tokens_per_second"] = result[f"reference_train_tokens_per_second_{auto}"]
        if native:
            losses = loss_after_same_tokens(recipe, args.tokens_steps, Path("runs/bench-llm"))
            result.update(val_loss_after_same_tokens=losses, val_loss_bf16_minus_fp32=losses["bf16"] - losses["fp32"])
    if args.shakespeare_run:
        records = [json.loads(line) for line in Path(args.shakespeare_run, "metrics.jsonl").read_text().splitlines()]
        result["shakespeare_recipe"] = json.loads(Path(args.shakespeare_run, "recipe.json").read_text())["name"]
        result["shakespeare_val_loss"] = min(r["val_loss"] for r in records if "val_loss" in r)
        result["shakespeare_train_seconds"] = records[-1]["summary"]["train_seconds"]
        curve = plot_training(args.shakespeare_run, RESULTS / f"shakespeare-{machine_kind()}.png")
        result["shakespeare_curve"] = curve.name
    decode = smollm2()
    result.update(decode)
    print(f"on {result['machine']}; {threads_line()}")
    rows += [(f"SmolLM2 decode tok/s (ours: {decode['smollm2_quantize']}; transformers fp32)",
              round(decode["smollm2_decode_tokens_per_second"], 1), round(decode["hf_decode_tokens_per_second"], 1))]
    if decode["llama_cpp_decode_tokens_per_second"] is not None:
        rows += [("SmolLM2 decode tok/s (llama.cpp)", round(decode["smollm2_decode_tokens_per_second"], 1),
                  round(decode["llama_cpp_decode_tokens_per_second"], 1)),
                 ("SmolLM2 prompt tok/s, 500 tokens (llama.cpp)", round(decode["prompt_tokens_per_second"], 1),
                  round(decode["llama_cpp_prompt_tokens_per_second"], 1))]
    print_table(rows, ("measure", "ours", "reference"))
    print_table([(mode, round(m["decode_tokens_per_second"], 1), round(m["prompt_tokens_per_second"]),
                  f"{m['weight_bytes'] / 1e6:.0f} MB", round(m["perplexity"], 3), f"{m['logits_mean_abs_diff']:.3f}",
                  m["same_argmax"]) for mode, m in decode["smollm2_modes"].items()],
                ("quantize", "decode tok/s", "prompt tok/s", "tensors", "perplexity", "mean |logit diff|",
                 "same argmax"))
    print(f"round by round, ours / transformers {decode['decode_vs_transformers']:.2f}x"
          + (f", ours / llama.cpp {decode['decode_vs_llama_cpp']:.2f}x decode, {decode['prompt_vs_llama_cpp']:.2f}x "
             "prompt" if "decode_vs_llama_cpp" in decode else ""))
    print(f"bandwidth ceiling {decode['bandwidth_ceiling_tokens_per_second']:.1f} tok/s; by context "
          f"{decode['decode_tokens_per_second_by_context']}")
    print(f"wrote {write_json(f'llm-{machine_kind()}.json', result)}")


if __name__ == "__main__":
    main()
