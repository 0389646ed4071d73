"""Train a Multi30k recipe, evaluate it on test_2016_flickr, and compare against references in the same run.

    python benchmarks/multi30k.py --recipe multi30k-de-en          # trains (about an hour on 2 CPU cores)
    python benchmarks/multi30k.py --recipe multi30k-de-en --run RUN  # evaluates an existing run

Writes benchmarks/results/<recipe>.json (with -cuda when trained on a GPU). References, measured here:
  - training throughput: torch.nn.Transformer of the same size on the same batches, same dtype, same
    optimizer, with the usual full-logits label-smoothed cross-entropy (nanoGPT-style eager PyTorch);
  - beam-5 decoding: transformers' MarianMTModel.generate on our weights exported with `export --to hf`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import Timer, machine, print_table, write_json

import transformerkit as tk
from transformerkit.data.datasets import multi30k
from transformerkit.evaluation.metrics import sacrebleu_score
from transformerkit.recipes import load_recipe
from transformerkit.runtime import keep_freed_memory
from transformerkit.tasks import prepare
from transformerkit.tasks.translation import evaluate_split
from transformerkit.training.run import train_recipe


def reference_training_throughput(recipe: dict, run_dir: str, steps: int = 40) -> dict[str, float]:
    """Tokens/s of our training step and of torch.nn.Transformer's, on the same batches, measured back to back."""
    setup = prepare(recipe, run_dir=run_dir)
    ours, config, batches = setup.model.train(), setup.model.config, setup.data.batches(0)[:steps]
    ref = _TorchTransformer(config).train()
    bf16 = setup.train_config.bf16
    results = {}
    for name, model, step in (("ours", ours, lambda b: setup.objective(ours, b)), ("reference", ref, ref.loss)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        for i, batch in enumerate(batches[:5] + batches):
            if i == 5:
                start, tokens = time.perf_counter(), 0
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, n = step(batch)
            (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 5:
                tokens += batch.n_tokens
        results[name] = tokens / (time.perf_counter() - start)
    return results


class _TorchTransformer(torch.nn.Module):
    """The reference: PyTorch's own Transformer with the same sizes, embeddings and output layer."""

    def __init__(self, c):
        super().__init__()
        self.embed = torch.nn.Embedding(c.vocab_size, c.d_model)
        self.positions = torch.nn.Embedding(c.max_len, c.d_model)
        self.net = torch.nn.Transformer(c.d_model, c.n_heads, c.n_layers, c.decoder_layers, c.d_ff, c.dropout,
                                        batch_first=True, norm_first=c.norm_position == "pre")
        self.scale = c.d_model**0.5

    def loss(self, b):
        def embed(ids):
            return self.embed(ids) * self.scale + self.positions(torch.arange(ids.shape[1]))

        causal = torch.nn.Transformer.generate_square_subsequent_mask(b.target_in.shape[1])
        hidden = self.net(embed(b.source), embed(b.target_in), tgt_mask=causal, src_key_padding_mask=~b.source_mask,
                          tgt_key_padding_mask=~b.target_mask, memory_key_padding_mask=~b.source_mask)
        logits = hidden @ self.embed.weight.t()
        loss = F.cross_entropy(logits.float().flatten(0, 1), b.target_out.flatten(), ignore_index=0,
                               label_smoothing=0.1, reduction="sum")
        return loss, b.n_target_tokens


def reference_beam_decoding(model, sentences: list[str], beam: int, out_dir: str) -> tuple[float, list[str]]:
    """Seconds for transformers' MarianMTModel.generate (beam search) on our exported weights, and its outputs."""
    import transformers

    from transformerkit.data.batching import pad
    from transformerkit.data.tokenizers import decode, encode

    tk.export_hf(model, out_dir)
    hf = transformers.MarianMTModel.from_pretrained(out_dir).eval()
    c = model.config
    ids = encode(model.source_tokenizer, sentences)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    outputs: list[list[int]] = [[] for _ in ids]
    with Timer() as timer, torch.no_grad():
        for start in range(0, len(order), 100):
            rows = order[start:start + 100]
            source, mask = pad([ids[i] + [c.eos_id] for i in rows], c.pad_id)
            generated = hf.generate(input_ids=source, attention_mask=mask.long(), num_beams=beam,
                                    max_new_tokens=int(1.5 * source.shape[1] + 10), decoder_start_token_id=c.start_id,
                                    eos_token_id=c.eos_id, pad_token_id=c.pad_id, length_penalty=1.0)
            for i, row in zip(rows, generated.tolist()):
                outputs[i] = [t for t in row[1:] if t not in (c.eos_id, c.pad_id)]
    return timer.seconds, decode(model.target_tokenizer, outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="multi30k-de-en")
    parser.add_argument("--run", help="evaluate this run folder instead of training")
    parser.add_argument("--set", action="append", default=[], help="recipe overrides, as for `transformerkit train`")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference measurements")
    parser.add_argument("--trained-on", help="with --run: the machine the run was trained on, when not this one")
    args = parser.parse_args()
    keep_freed_memory()
    recipe = load_recipe(args.recipe, args.set)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = args.run or f"runs/bench-{recipe['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.run:
        train_recipe(recipe, run, device)
    summary = json.loads(Path(run, "metrics.jsonl").read_text().splitlines()[-1])["summary"]
    model = tk.load(run, device=device)
    beam = evaluate_split(model, "test_2016_flickr", beam=5)
    greedy = evaluate_split(model, "test_2016_flickr", beam=1)
    result = {
        "recipe": recipe["name"], "direction": f"{recipe['data']['source']}-{recipe['data']['target']}",
        "bleu_tokenized_beam": beam["bleu_tokenized"], "bleu_tokenized_greedy": greedy["bleu_tokenized"],
        "sacrebleu_beam": beam["sacrebleu"], "sacrebleu_greedy": greedy["sacrebleu"], "chrf_beam": beam["chrf"],
        "sacrebleu_signature": beam["sacrebleu_signature"], "train_seconds": summary["train_seconds"],
        "train_tokens_per_second": summary["tokens_per_second"], "train_steps": summary["step"],
        "beam_translate_seconds": beam["translate_seconds"], "greedy_translate_seconds": greedy["translate_seconds"],
        "checkpoint": tk.loading.resolve(run).name, "parameters": sum(p.numel() for p in model.parameters()),
        "machine": machine(), "device": device, "train_machine": args.trained_on or machine(),
    }
    rows = [("ours", result["bleu_tokenized_beam"], result["bleu_tokenized_greedy"], result["sacrebleu_beam"],
             round(result["train_tokens_per_second"]), result["beam_translate_seconds"])]
    if not args.no_reference and device == "cpu":
        speeds = reference_training_throughput(recipe, run)
        test = multi30k("test_2016_flickr", model.task["source_lang"], model.task["target_lang"])
        seconds, hf_outputs = reference_beam_decoding(model, test.sources, 5, f"{run}/hf-export")
        result["reference"] = {
            "train_step_tokens_per_second": speeds, "ours_train_step_speedup": speeds["ours"] / speeds["reference"],
            "hf_marian_beam5_seconds": seconds, "ours_beam5_speedup": seconds / result["beam_translate_seconds"],
            "hf_marian_beam5_sacrebleu": sacrebleu_score(hf_outputs, test.targets)["sacrebleu"],
        }
        rows.append(("ours, train step alone", "", "", "", round(speeds["ours"]), ""))
        rows.append(("torch.nn.Transformer, train step", "", "", "", round(speeds["reference"]), ""))
        rows.append(("transformers MarianMTModel.generate", "", "", result["reference"]["hf_marian_beam5_sacrebleu"],
                     "", seconds))
    print(f"{recipe['name']} on {result['machine']}")
    print_table(rows, ("system", "tok. BLEU beam5", "tok. BLEU greedy", "sacreBLEU beam5", "train tok/s",
                       "beam5 test s"))
    name = recipe["name"] + ("-cuda" if device == "cuda" else "") + ".json"
    print(f"wrote {write_json(name, result)}")


if __name__ == "__main__":
    main()
