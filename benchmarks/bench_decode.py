"""Decoding throughput: ours against transformers' generate on the same weights, forced to the same length.

    python benchmarks/bench_decode.py [--sizes shakespeare-char,multi30k-de-en,gpt2-small] [--dtypes fp32,bf16]
                                      [--run RUN]

Each pair is our model and the transformers model that `transformerkit export --to hf` writes from it (so
the weights are the same): GPT2LMHeadModel for the decoders, MarianMTModel for the translation model.
Greedy and sampling (temperature 1, no top-k) at batch 1 and 8, and beam 5 at batch 1, every output forced to
the same number of new tokens (min = max) so the work is equal. The translation model is the multi30k-de-en
recipe's size with fresh weights, post-norm (MarianMT has no pre-norm layout; the cost of a step is the
same), or RUN's trained model. Ours is read back through tk.load, as the commands read a model. Ours runs twice
in every case: as `generate` runs by default (eager steps), and with its decoding steps compiled whole
(inference/step_graph.py, what `--compile` gives), the first call's compilation timed apart. Each row
also gives the memory-bandwidth ceiling: a decoding step reads every weight once, so no implementation beats
batch x (copy rate / weight bytes) tokens/s. dtypes default to float32, and bfloat16 where this machine
multiplies it natively. Writes
benchmarks/results/bench_decode-<machine kind>.json (-cuda on a GPU), keeping the rows of sizes and dtypes
not measured in this run and those of other processors (common.kept_rows).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch
from common import RESULTS, copy_bandwidth, kept_rows, machine, machine_facts, machine_kind, print_table, write_json

import transformerkit as tk
from transformerkit import runtime
from transformerkit.data.batching import pad
from transformerkit.inference.generate import GenerationOptions, generate_ids
from transformerkit.inference.step_graph import compile_steps
from transformerkit.inference.translate import decode_sources
from transformerkit.quantize import weight_bytes
from transformerkit.runtime import keep_freed_memory

CASES = (("greedy", 1), ("greedy", 8), ("sampling", 1), ("sampling", 8), ("beam5", 1))  # (mode, batch)


def settings(mode: str) -> tuple[int, float]:
    """(beam, temperature) of a mode."""
    return (5, 0.0) if mode == "beam5" else (1, 1.0 if mode == "sampling" else 0.0)


def decoder(size: str) -> tuple[tk.DecoderOnly, int, int]:
    """(model, prompt length, new tokens) for a decoder-only size."""
    if size == "shakespeare-char":
        config = tk.preset("gpt2-small").replace(vocab_size=65, d_model=384, n_layers=6, n_heads=6, d_ff=1536,
                                                 max_len=256, dropout=0.0, attention_dropout=0.0, pad_id=0, bos_id=0,
                                                 eos_id=0)
        return tk.build_model(config).eval(), 16, 200
    return tk.build_model(tk.preset("gpt2-small", dropout=0.0, attention_dropout=0.0)).eval(), 32, 64


def as_loaded(model, dtype: torch.dtype):
    """The model as the commands have it: saved, then read back by tk.load in `dtype` (which also stores the
    weights in the layout this machine decodes fastest with)."""
    with tempfile.TemporaryDirectory() as folder:
        tk.save(model, folder)
        return tk.load(folder, device="cpu", dtype=dtype)


def run_decoder(size: str, dtype: torch.dtype, repeats: int, bandwidth: float) -> list[dict]:
    import transformers

    ours, prompt_len, new = decoder(size)
    with tempfile.TemporaryDirectory() as folder:
        tk.export_hf(ours, folder)
        reference = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=dtype).eval()
    ours = as_loaded(ours, dtype)
    graphs = step_graphs(ours)
    steps_ceiling = bandwidth / weight_bytes(ours)
    rows = []
    for mode, batch in CASES:
        prompts = torch.randint(1, ours.config.vocab_size, (batch, prompt_len))
        beam, temperature = settings(mode)
        options = GenerationOptions(max_new_tokens=new, min_new_tokens=new, temperature=temperature, beam=beam,
                                    seed=0 if temperature else None)
        ours_run = lambda: generate_ids(ours, prompts.tolist(), options)  # noqa: E731
        hf_options = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beam, do_sample=temperature > 0,
                          top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
        with torch.no_grad():
            seconds = _best_in_turn(
                ours_run, compiled(ours, graphs, ours_run),
                lambda: reference.generate(prompts, attention_mask=torch.ones_like(prompts), **hf_options), repeats)
        shares = model_share(ours_run, ours), model_share(compiled(ours, graphs, ours_run), ours)
        rows.append(_row(size, dtype, mode, batch, batch * new, seconds, "GPT2LMHeadModel.generate", shares,
                         batch * steps_ceiling))
    return rows


def run_translation(dtype: torch.dtype, repeats: int, run: str | None, bandwidth: float, sentences: int = 16,
                    new: int = 30) -> list[dict]:
    """The same test sentences decoded in batches of 1 or 8 (so each case does the same sentences), through
    `decode_sources`, the path `translate` takes after tokenizing."""
    import transformers

    from transformerkit.data.datasets import multi30k
    from transformerkit.data.tokenizers import encode
    from transformerkit.recipes import load_recipe
    from transformerkit.tasks import prepare

    if run:
        model = tk.load(run, device="cpu")
    else:  # post-norm: MarianMT has no pre-norm layout
        model = prepare(load_recipe("multi30k-de-en", ['model.norm_position="post"']), run_dir="runs/bench").model
    with tempfile.TemporaryDirectory() as folder:
        tk.export_hf(model, folder)
        reference = transformers.MarianMTModel.from_pretrained(folder, dtype=dtype).eval()
    model = as_loaded(model, dtype)
    graphs = step_graphs(model)
    c = model.config
    test = encode(model.source_tokenizer, multi30k("test_2016_flickr", "de", "en").sources[:sentences])
    steps_ceiling = bandwidth / weight_bytes(model)  # an upper bound: the encoder runs once, not every step
    rows = []
    for mode, batch in CASES:
        batches = [pad([s + [c.eos_id] for s in test[i:i + batch]], c.pad_id) for i in range(0, sentences, batch)]
        beam, temperature = settings(mode)

        def ours():
            generator = torch.Generator().manual_seed(0)
            for source, mask in batches:
                decode_sources(model, source, mask, new, beam, 0.6, min_len=new, temperature=temperature,
                               generator=generator)

        def hf():
            for source, mask in batches:
                reference.generate(input_ids=source, attention_mask=mask.long(), max_new_tokens=new,
                                   min_new_tokens=new, num_beams=beam, do_sample=mode == "sampling", top_k=0,
                                   top_p=1.0, temperature=1.0, decoder_start_token_id=c.start_id,
                                   eos_token_id=c.eos_id, pad_token_id=c.pad_id)

        with torch.no_grad():
            seconds = _best_in_turn(ours, compiled(model, graphs, ours), hf, repeats)
            shares = model_share(ours, model), model_share(compiled(model, graphs, ours), model)
        rows.append(_row("multi30k-de-en", dtype, mode, batch, sentences * new, seconds, "MarianMTModel.generate",
                         shares, batch * steps_ceiling))
    return rows


def step_graphs(model):
    """The model's compiled decoding steps, made (they compile on first use) and put aside: `compiled` lends them."""
    compile_steps(model)
    graphs, model.step_graphs = model.step_graphs, None
    return graphs


def compiled(model, graphs, run):
    """`run` with the model's decoding steps compiled whole (what --compile gives)."""
    def with_graphs():
        model.step_graphs = graphs
        try:
            return run()
        finally:
            model.step_graphs = None
    return with_graphs


@contextlib.contextmanager
def model_timer(model):
    """Time spent inside the model's decoding interface (start: the encoder; step: the decoder and the output
    layer): the model's share of decoding, the rest being search bookkeeping in Python (choosing tokens,
    reordering beams, stopping)."""
    spent = [0.0]

    def timed(method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return call

    model.start, model.step = timed(model.start), timed(model.step)  # instance attributes shadow the methods
    try:
        yield spent
    finally:
        del model.start, model.step


def model_share(fn, model) -> float:
    with model_timer(model) as spent:
        start = time.perf_counter()
        fn()
        total = time.perf_counter() - start
    return spent[0] / total


def _best_in_turn(ours, ours_compiled, reference, repeats: int) -> tuple[float, float, float, float]:
    """The best time of each of three runs, timed in turn (ours, compiled, the reference, ours, ...) after one
    untimed call of each (the compiled run's first call, which compiles, is timed apart: the last number): a
    decoding step reads every weight, so its speed follows the host's memory rate, which on a shared machine
    drifts over minutes (two blocks timed one after the other moved the ratio by up to 25%)."""
    ours()
    start = time.perf_counter()
    ours_compiled()
    first = time.perf_counter() - start
    reference()
    times = ([], [], [])
    for _ in range(repeats):
        for fn, spent in zip((ours, ours_compiled, reference), times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    best = [min(t) for t in times]
    return best[0], best[1], best[2], max(0.0, first - best[1])


def _row(size, dtype, mode, batch, tokens, seconds, reference, shares, ceiling) -> dict:
    ours_seconds, compiled_seconds, ref_seconds, compile_seconds = seconds
    row = {"size": size, "dtype": "bf16" if dtype == torch.bfloat16 else "fp32", "mode": mode, "batch": batch,
           "ours_tokens_per_second": tokens / ours_seconds, "reference_tokens_per_second": tokens / ref_seconds,
           "speedup": ref_seconds / ours_seconds, "model_time_share": shares[0],
           "ours_compiled_tokens_per_second": tokens / compiled_seconds,
           "compiled_speedup": ref_seconds / compiled_seconds, "compiled_model_time_share": shares[1],
           "compile_seconds": compile_seconds,
           "bandwidth_ceiling_tokens_per_second": ceiling, "share_of_ceiling": tokens / ours_seconds / ceiling,
           "compiled_share_of_ceiling": tokens / compiled_seconds / ceiling, "reference": reference,
           **machine_facts()}
    print(f"{size} {row['dtype']} {mode} batch {batch}: ours {row['ours_tokens_per_second']:.0f} tok/s "
          f"({row['speedup']:.2f}x), compiled {row['ours_compiled_tokens_per_second']:.0f} tok/s "
          f"({row['compiled_speedup']:.2f}x, {compile_seconds:.0f} s to compile), reference "
          f"{row['reference_tokens_per_second']:.0f} tok/s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="shakespeare-char,multi30k-de-en,gpt2-small")
    parser.add_argument("--dtypes", default="fp32,bf16" if runtime.native_bf16("cpu") else "fp32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run", help="a trained multi30k-de-en run to decode with (default: fresh weights)")
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    rows, bandwidth = [], copy_bandwidth()
    for name in args.dtypes.split(","):
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        for size in args.sizes.split(","):
            try:
                rows += run_translation(dtype, args.repeats, args.run, bandwidth) if size == "multi30k-de-en" else \
                    run_decoder(size, dtype, args.repeats, bandwidth)
            except tk.ConfigError as error:  # e.g. --run names a pre-norm model, which MarianMT cannot hold
                raise SystemExit(f"bench_decode: {size}: {error}") from None
    print(f"on {machine()}")
    print_table([(r["size"], r["dtype"], r["mode"], r["batch"], round(r["ours_tokens_per_second"]),
                  round(r["ours_compiled_tokens_per_second"]), round(r["reference_tokens_per_second"]),
                  f"{r['speedup']:.2f}x", f"{r['compiled_speedup']:.2f}x",
                  f"{r['model_time_share']:.0%} / {r['compiled_model_time_share']:.0%}",
                  round(r["bandwidth_ceiling_tokens_per_second"]), f"{r['compiled_share_of_ceiling']:.0%}",
                  f"{r['compile_seconds']:.0f}")
                 for r in rows], ("size", "dtype", "mode", "batch", "ours tok/s", "compiled tok/s",
                                  "transformers tok/s", "speedup", "compiled speedup", "model share",
                                  "ceiling tok/s", "compiled of ceiling", "compile s"))
    name = f"bench_decode-{machine_kind()}.json"
    print(f"wrote {write_json(name, kept_rows(RESULTS / name, rows) + rows)}")


if __name__ == "__main__":
    main()
