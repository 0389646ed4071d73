"""Train a Multi30k recipe, evaluate it on test_2016_flickr, and compare against references in the same run.

    python benchmarks/multi30k.py --recipe multi30k-de-en          # trains (about an hour on 2 CPU cores)
    python benchmarks/multi30k.py --recipe multi30k-de-en --run RUN  # evaluates an existing run

Writes benchmarks/results/<recipe>-<machine kind>.json (amx, avx512bf16, avx512, avx2, cuda): results differ by
machine, so each kind keeps its own. References, measured here in the same run:
  - training throughput, float32 (and bfloat16 where the machine runs it natively): the Trainer's own step
    against the same model written with plain PyTorch modules (nn.Linear, F.scaled_dot_product_attention,
    F.cross_entropy; benchmarks/references.py) and against torch.nn.Transformer, on the same batches;
  - beam-5 decoding: transformers' MarianMTModel.generate on our weights exported with `export --to hf`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import Timer, machine, machine_facts, machine_kind, print_table, write_json
from references import PlainTransformer, TorchTransformer, plain_step, time_steps

import transformerkit as tk
from transformerkit import runtime
from transformerkit.data.datasets import multi30k
from transformerkit.evaluation.metrics import sacrebleu_score
from transformerkit.evaluation.test_set import evaluate_split
from transformerkit.recipes import load_recipe
from transformerkit.tasks import prepare
from transformerkit.tasks.run import train_recipe
from transformerkit.training.trainer import Trainer


def training_throughput(recipe: dict, run_dir: str, precision: str, steps: int = 40) -> dict[str, float]:
    """Tokens/s of the Trainer's step (our loss, optimizer step and autocast) and of the two references on the
    same batches, in one precision, measured back to back."""
    setup = prepare({**recipe, "training": {**recipe["training"], "precision": precision}}, run_dir=run_dir)
    batches = setup.data.batches(0)[:steps + 3]
    trainer = Trainer(setup.model, setup.data, setup.objective, setup.train_config, run_dir, progress_bar=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    speeds = {"ours": time_steps(lambda batch: trainer.step([batch]), batches)}
    for name, cls in (("plain", PlainTransformer), ("nn_transformer", TorchTransformer)):
        speeds[name] = time_steps(plain_step(cls(setup.model.config), dtype), batches)
    return speeds


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
    runtime.keep_freed_memory()
    runtime.choose_threads()
    recipe = load_recipe(args.recipe, args.set)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = args.run or f"runs/bench-{recipe['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.run:
        train_recipe(recipe, run, device)
    records = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()]
    summary, start = records[-1]["summary"], records[0]
    model = tk.load(run, device=device)
    # the recipe's decoding, also for a run trained before the recipe's length penalty was tuned on val
    alpha = recipe.get("decoding", {}).get("length_penalty")
    beam = evaluate_split(model, "test_2016_flickr", beam=5, length_penalty=alpha)
    greedy = evaluate_split(model, "test_2016_flickr", beam=1)
    result = {
        "recipe": recipe["name"], "direction": f"{recipe['data']['source']}-{recipe['data']['target']}",
        "bleu_tokenized_beam": beam["bleu_tokenized"], "bleu_tokenized_greedy": greedy["bleu_tokenized"],
        "sacrebleu_beam": beam["sacrebleu"], "sacrebleu_greedy": greedy["sacrebleu"], "chrf_beam": beam["chrf"],
        "sacrebleu_signature": beam["sacrebleu_signature"], "length_penalty": beam["length_penalty"],
        "train_seconds": summary["train_seconds"],
        "train_tokens_per_second": summary["tokens_per_second"], "train_steps": summary["step"],
        "planned_steps": summary.get("planned_steps"), "budget_minutes": summary.get("budget_minutes"),
        "precision": start.get("precision"), "precision_reason": start.get("precision_reason"),
        "beam_translate_seconds": beam["translate_seconds"], "greedy_translate_seconds": greedy["translate_seconds"],
        "checkpoint": tk.loading.resolve(run).name, "parameters": sum(p.numel() for p in model.parameters()),
        **machine_facts(), "device": device, "train_machine": args.trained_on or start.get("machine", machine()),
    }
    rows = [("ours", result["bleu_tokenized_beam"], result["bleu_tokenized_greedy"], result["sacrebleu_beam"],
             round(result["train_tokens_per_second"]), result["beam_translate_seconds"])]
    if not args.no_reference and device == "cpu":
        precisions = ["fp32"] + (["bf16"] if runtime.native_bf16("cpu") else [])
        speeds = {p: training_throughput(recipe, run, p) for p in precisions}
        result["reference"] = {"train_step_tokens_per_second": speeds,
                               "ours_over_plain_fp32": speeds["fp32"]["ours"] / speeds["fp32"]["plain"]}
        for precision, row in speeds.items():
            rows.append((f"ours, train step alone ({precision})", "", "", "", round(row["ours"]), ""))
            rows.append((f"plain PyTorch modules, train step ({precision})", "", "", "", round(row["plain"]), ""))
            rows.append((f"torch.nn.Transformer, train step ({precision})", "", "", "", round(row["nn_transformer"]),
                         ""))
        test = multi30k("test_2016_flickr", model.task["source_lang"], model.task["target_lang"])
        try:
            seconds, hf_outputs = reference_beam_decoding(model, test.sources, 5, f"{run}/hf-export")
        except tk.CheckpointError as error:  # e.g. a pre-norm encoder-decoder: Marian is post-norm only
            result["reference"]["hf_marian_beam5"] = f"not measured: {error}"
        else:
            result["reference"].update(
                hf_marian_beam5_seconds=seconds, ours_beam5_speedup=seconds / result["beam_translate_seconds"],
                hf_marian_beam5_sacrebleu=sacrebleu_score(hf_outputs, test.targets)["sacrebleu"])
            rows.append(("transformers MarianMTModel.generate", "", "",
                         result["reference"]["hf_marian_beam5_sacrebleu"], "", seconds))
    print(f"{recipe['name']} on {result['machine']} ({result['precision']}: {result['precision_reason']})")
    print_table(rows, ("system", "tok. BLEU beam5", "tok. BLEU greedy", "sacreBLEU beam5", "train tok/s",
                       "beam5 test s"))
    name = f"{recipe['name']}-{machine_kind()}.json"
    print(f"wrote {write_json(name, result)}")


if __name__ == "__main__":
    main()
