"""The LLM workflow's numbers, measured side by side in one run.

    python benchmarks/llm.py --shakespeare-run RUN   # RUN: a finished `transformerkit train shakespeare-char`

1. Training throughput at the shakespeare-char size (10.7M parameters, batch 64 x 256): ours in float32 and in
   bfloat16, and a nanoGPT-style eager model (written out below, as nanoGPT's model.py does it) in both.
2. Validation loss after the same number of tokens, float32 against bfloat16 (same seed, same batches).
3. The shakespeare-char run's validation loss and training time (from RUN's metrics).
4. SmolLM2-135M-Instruct decoding: ours against transformers' generate on the same weights and dtype, the
   memory-bandwidth ceiling (bytes of weights per token over the measured copy bandwidth), time to first token
   for a 500-token prompt, and decode speed at 100, 1,000 and 4,000 tokens of context.
Writes benchmarks/results/llm.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine, print_table, write_json
from torch import nn

import transformerkit as tk
from transformerkit.inference.generate import GenerationOptions, generate_ids
from transformerkit.recipes import load_recipe
from transformerkit.runtime import keep_freed_memory
from transformerkit.tasks import prepare


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


def train_throughput(setup, steps: int = 12) -> dict[str, float]:
    """Training tokens/s (every token of the batch) of ours and nanoGPT, float32 and bfloat16, same batches."""
    c = setup.model.config
    data = setup.data
    results = {}
    for name in ("ours", "nanogpt"):
        for bf16 in (False, True):
            torch.manual_seed(0)
            if name == "ours":
                model = tk.build_model(c).train()
                step = lambda b: setup.objective(model, b)[0] / b.n_tokens  # noqa: E731
            else:
                model = NanoGPT(c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.max_len, c.dropout).train()
                step = lambda b: model(b.ids[:, :-1], b.ids[:, 1:])  # noqa: E731
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batches = [data.batch(0, i) for i in range(steps + 2)]
            for i, batch in enumerate(batches):
                if i == 2:
                    start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = step(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            results[f"{name}_{'bf16' if bf16 else 'fp32'}"] = steps * batches[0].n_tokens / seconds
    return results


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


def copy_bandwidth() -> float:
    """Bytes per second of a large tensor copy (read + write), the memory system's practical rate."""
    src = torch.empty(256 * 2**20 // 4)
    dst = torch.empty_like(src)
    src.fill_(1.0)
    dst.copy_(src)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def decode_speed(model, prompt_ids: list[int], new_tokens: int) -> float:
    """Tokens/s of single-stream greedy decoding after the prompt (the prefill is not counted)."""
    state = model.start(1, len(prompt_ids) + new_tokens + 1)
    with torch.no_grad():
        token = model.step(torch.tensor([prompt_ids]), state).argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = model.step(token, state).argmax(-1, keepdim=True)
    return new_tokens / (time.perf_counter() - start)


def smollm2(dtype: torch.dtype, new_tokens: int = 128) -> dict[str, float]:
    import transformers

    from transformerkit.loading import resolve_alias

    path = resolve_alias("smollm2")
    ours = tk.load("smollm2", device="cpu", dtype=dtype)
    prompt = ours.tokenizer.encode("<|im_start|>user\nTell me a long story about a lighthouse keeper.<|im_end|>\n"
                                   "<|im_start|>assistant\n").ids
    options = GenerationOptions(max_new_tokens=new_tokens, stop_tokens=[])
    ours_config = ours.config
    ours_eos = ours_config.eos_id
    ours.config = ours_config.replace(eos_id=ours_config.vocab_size - 1)  # forced length: no early stop
    generate_ids(ours, [prompt], GenerationOptions(max_new_tokens=4))  # warm up
    start = time.perf_counter()
    out = generate_ids(ours, [prompt], options)[0]
    ours_seconds = time.perf_counter() - start
    ours.config = ours_config
    assert len(out) == new_tokens
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        hf.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=ours_eos)
        start = time.perf_counter()
        hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=ours_eos)
        hf_seconds = time.perf_counter() - start
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    bandwidth = copy_bandwidth()
    long_prompt = (ours.tokenizer.encode("The lighthouse keeper counted the waves. " * 80).ids * 60)
    state = ours.start(1, 600)
    with torch.no_grad():
        start = time.perf_counter()
        ours.step(torch.tensor([long_prompt[:500]]), state)
        ttft = time.perf_counter() - start
    by_context = {str(n): decode_speed(ours, long_prompt[:n], 32) for n in (100, 1000, 4000)}
    return {"smollm2_decode_tokens_per_second": new_tokens / ours_seconds,
            "hf_decode_tokens_per_second": new_tokens / hf_seconds,
            "bandwidth_ceiling_tokens_per_second": bandwidth / weight_bytes, "weight_bytes": weight_bytes,
            "copy_bandwidth_gb_per_second": bandwidth / 1e9, "ttft_500_seconds": ttft,
            "decode_tokens_per_second_by_context": by_context}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare-run", help="a finished shakespeare-char run folder")
    parser.add_argument("--tokens-steps", type=int, default=200, help="steps for the fp32/bf16 loss comparison")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="SmolLM2 decoding dtype")
    args = parser.parse_args()
    keep_freed_memory()
    recipe = load_recipe("shakespeare-char")
    setup = prepare(recipe, run_dir="runs/bench-llm")
    speeds = train_throughput(setup)
    losses = loss_after_same_tokens(recipe, args.tokens_steps, Path("runs/bench-llm"))
    decode = smollm2(torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    result = {"train_tokens_per_second": speeds["ours_bf16"], "train_tokens_per_second_fp32": speeds["ours_fp32"],
              "reference_train_tokens_per_second": speeds["nanogpt_fp32"],
              "reference_train_tokens_per_second_bf16": speeds["nanogpt_bf16"],
              "bf16_speedup_over_fp32": speeds["ours_bf16"] / speeds["ours_fp32"],
              "val_loss_after_same_tokens": losses, "val_loss_bf16_minus_fp32": losses["bf16"] - losses["fp32"],
              **decode, "decode_dtype": args.dtype, "machine": machine()}
    if args.shakespeare_run:
        records = [json.loads(line) for line in Path(args.shakespeare_run, "metrics.jsonl").read_text().splitlines()]
        result["shakespeare_val_loss"] = min(r["val_loss"] for r in records if "val_loss" in r)
        result["shakespeare_train_seconds"] = records[-1]["summary"]["train_seconds"]
    print(f"on {result['machine']}")
    print_table([("train tok/s fp32", round(speeds["ours_fp32"]), round(speeds["nanogpt_fp32"])),
                 ("train tok/s bf16", round(speeds["ours_bf16"]), round(speeds["nanogpt_bf16"])),
                 ("SmolLM2 decode tok/s", round(decode["smollm2_decode_tokens_per_second"], 1),
                  round(decode["hf_decode_tokens_per_second"], 1))], ("measure", "ours", "reference"))
    print(f"bandwidth ceiling {decode['bandwidth_ceiling_tokens_per_second']:.1f} tok/s; TTFT(500) "
          f"{decode['ttft_500_seconds']:.2f} s; by context {decode['decode_tokens_per_second_by_context']}")
    print(f"wrote {write_json('llm.json', result)}")


if __name__ == "__main__":
    main()
