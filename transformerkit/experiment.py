"""`transformerkit experiment multi30k`: the recurrent baselines and the Transformer, side by side.

Every model trains on the same data with the same BPE vocabulary and the same wall-clock budget (or the
same number of epochs), is evaluated with greedy and beam search, and lands in one table and two
pictures. The experiment folder holds one run folder per model; an interrupted experiment keeps the
models it finished and resumes the one it was training.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .data.datasets import multi30k
from .data.tokenizers import train_bpe
from .errors import ConfigError
from .recipes import load_recipe
from .summary import format_table
from .tasks.run import RECIPE_FILE, train_recipe

MODELS = {  # results name -> recipe (with the direction filled in)
    "lstm": "multi30k-{direction}-lstm",
    "gru": "multi30k-{direction}-gru",
    "gru_attention": "multi30k-{direction}-gru-attention",
    "lstm_attention": "multi30k-{direction}-lstm-attention",
    # the tiny Transformer's recipe, its schedule sized to the experiment's budget. Not the demo's: without
    # dropout it overfits where a machine affords many steps (on an AMD EPYC with native bf16, 20 minutes, de->en
    # val: BLEU 36.0 at step 2,800 of 6,050, then down to 32.7 with val loss up from 1.98 to 2.67), while the
    # 60-minute recipe's dropout 0.3 was at val BLEU 39.5 after 15.6 minutes of its hour, still rising
    "transformer": "multi30k-{direction}",
}
FIELDS = ("model", "parameters", "train_seconds", "train_tokens_per_second", "precision", "val_loss",
          "bleu_tokenized_greedy", "bleu_tokenized_beam", "sacrebleu_greedy", "sacrebleu_beam")


def run_experiment(out: Path, direction: str = "de-en", budget_minutes: float | None = 20.0, epochs: int | None = None,
                   models: list[str] | None = None, device: str = "cpu", vocab_size: int = 8000,
                   extra: list[str] = ()) -> list[dict[str, Any]]:
    """Train, evaluate and compare; writes results.json, results.md, bleu_vs_time.png and attention.png."""
    source, target = _direction(direction)
    names = models or list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ConfigError(f"--models: {unknown[0]!r} is not a model here; choose from {', '.join(MODELS)}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / "tokenizer.json"
    if not tokenizer_path.exists():  # one vocabulary for every model, so their numbers compare
        train = multi30k("train", source, target)
        train_bpe(train.sources + train.targets, vocab_size).save(str(tokenizer_path))
    started = time.perf_counter()
    results = []
    for i, name in enumerate(names):
        run = out / name
        remaining = len(names) - i
        eta = f", about {remaining * budget_minutes:.0f} min left" if budget_minutes and not epochs else ""
        print(f"[{i + 1}/{len(names)}] {name}{eta}", file=sys.stderr, flush=True)
        if not _finished(run):
            recipe = load_recipe(MODELS[name].format(direction=direction), [
                f"tokenizer.path={json.dumps(str(tokenizer_path))}", *extra])
            _set_budget(recipe, budget_minutes, epochs)
            resume = (run / RECIPE_FILE).exists() and (run / "last").exists()
            train_recipe(None if resume else recipe, run, device, resume=resume)
        results.append(evaluate_model(name, run, device))
        (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results)
    print(f"experiment finished in {(time.perf_counter() - started) / 60:.1f} min; see {out / 'results.md'}",
          file=sys.stderr)
    return results


def _direction(direction: str) -> tuple[str, str]:
    source, sep, target = direction.partition("-")
    if not sep or not source or not target:
        raise ConfigError(f"--direction: {direction!r} is not allowed; write it as source-target, e.g. de-en")
    return source, target


def _set_budget(recipe: dict[str, Any], minutes: float | None, epochs: int | None) -> None:
    """Equal wall-clock (or equal epochs) for every model: the recipe's own limits give way to a time budget,
    which sizes each model's whole schedule (warmup, decay, averaging) to end inside it on this machine, with
    evaluations spread over it for the curves; or to a number of epochs."""
    training = recipe.setdefault("training", {})
    for key in ("max_epochs", "max_minutes", "max_steps", "budget_minutes"):
        training.pop(key, None)
    if epochs:
        training["max_epochs"] = epochs
        if training.get("schedule") == "cosine":  # cosine needs a length in steps; the budget is in epochs
            training["schedule"] = "inverse_sqrt"
    else:
        training["budget_minutes"] = minutes
        training["max_minutes"] = 1.1 * minutes  # a hard stop, should the machine slow down at the very end
        training["evaluations"] = max(6, training.get("evaluations", 0))  # a curve per model


def _finished(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and "summary" in json.loads(metrics.read_text().splitlines()[-1])


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def evaluate_model(name: str, run: Path, device: str) -> dict[str, Any]:
    from .evaluation.test_set import evaluate_split
    from .loading import load

    records = _records(run)
    summary = records[-1]["summary"]
    evals = [r for r in records if "val_loss" in r]
    model = load(run, device=device)
    greedy = evaluate_split(model, "test_2016_flickr", beam=1)
    beam = evaluate_split(model, "test_2016_flickr", beam=5)
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": summary["train_seconds"], "train_tokens_per_second": summary["tokens_per_second"],
            "precision": summary["precision"], "planned_steps": summary["planned_steps"],
            "final_lr": summary.get("final_lr"), "machine": summary.get("machine"),  # none in older runs
            "val_loss": evals[-1]["val_loss"] if evals else None,
            "bleu_tokenized_greedy": greedy["bleu_tokenized"], "bleu_tokenized_beam": beam["bleu_tokenized"],
            "sacrebleu_greedy": greedy["sacrebleu"], "sacrebleu_beam": beam["sacrebleu"]}


def write_report(out: Path, results: list[dict[str, Any]]) -> None:
    rows = [tuple(_cell(r[f]) for f in FIELDS) for r in results]
    machines = "; ".join(dict.fromkeys(str(r.get("machine")) for r in results))  # where each model trained
    (out / "results.md").write_text(
        "# Multi30k: recurrent baselines and the Transformer\n\n"
        "Test set test_2016_flickr; tokenized BLEU is lowercased and Moses-tokenized (the Multi30k convention),\n"
        "sacreBLEU is cased and detokenized. Every model trained on the same data and BPE vocabulary.\n\n"
        "```\n" + format_table(rows, FIELDS) + "\n```\n\n" + f"Trained on: {machines}\n")
    plot_bleu_vs_time(out, [r["model"] for r in results])
    if any(r["model"].endswith("attention") for r in results) and any(r["model"] == "transformer" for r in results):
        plot_alignments(out)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 1e4 else f"{value:.0f}"
    return f"{value:,}" if isinstance(value, int) else value


def plot_bleu_vs_time(out: Path, names: list[str]) -> Path:
    from .viz import plot_curves

    curves = {}
    for name in names:
        evals = [r for r in _records(out / name) if "val_bleu" in r and "averaged" not in r]
        curves[name] = ([r["elapsed"] / 60 for r in evals], [r["val_bleu"] for r in evals])
    return plot_curves(curves, out / "bleu_vs_time.png", "training wall-clock (minutes)",
                       "validation sacreBLEU (greedy)", "Multi30k: validation BLEU against training time")


@torch.no_grad()
def plot_alignments(out: Path, index: int = 0) -> Path:
    """The same test sentence aligned by an attention RNN (its additive attention) and by the Transformer
    (cross-attention of the last decoder layer, averaged over heads), side by side."""
    from .inference.translate import translate
    from .loading import load
    from .viz import plot_alignments as draw
    from .viz import translation_attention

    task = load(out / "transformer", device="cpu").task
    sentence = multi30k("test_2016_flickr", task["source_lang"], task["target_lang"]).sources[index]
    panels = []
    for name in [n for n in MODELS if n.endswith("attention") and (out / n).exists()][:1] + ["transformer"]:
        model = load(out / name, device="cpu")
        translation = translate(model, [sentence], beam=1)[0]
        if name == "transformer":
            weights, source_tokens, target_tokens = translation_attention(model, sentence, translation)
            matrix = weights["cross"][-1].mean(dim=0)  # (T, S)
        else:
            matrix, source_tokens, target_tokens = _rnn_alignment(model, sentence, translation)
        panels.append((name.replace("_", " "), matrix, source_tokens, target_tokens))
    return draw(panels, out / "attention.png", "Where each output token looks in the source")


def _rnn_alignment(model, sentence: str, translation: str):
    c = model.config
    source = model.source_tokenizer.encode(sentence, add_special_tokens=False)
    target = model.target_tokenizer.encode(translation, add_special_tokens=False)
    source_ids = torch.tensor([source.ids + [c.eos_id]])
    target_ids = torch.tensor([[c.start_id] + target.ids])
    weights = model.attention_weights(source_ids, target_ids)[0]  # (T, S)
    return weights, source.tokens + ["</s>"], ["<s>"] + target.tokens
