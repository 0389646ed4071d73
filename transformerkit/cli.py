"""`transformerkit <command>`: one subcommand, one function, its docstring the help.

Library code raises typed errors (ConfigError, DataError, CheckpointError); here they become one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .errors import ConfigError, TransformerkitError

Handler = Callable[[argparse.Namespace], int | None]
COMMANDS: dict[str, tuple[Handler, list[tuple[tuple[str, ...], dict[str, Any]]]]] = {}


def arg(*names: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return names, options


def command(*arguments: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[Handler], Handler]:
    """Register a function as `transformerkit <its name with dashes>`."""

    def register(handler: Handler) -> Handler:
        COMMANDS[handler.__name__.removesuffix("_").replace("_", "-")] = (handler, list(arguments))
        return handler

    return register


DEVICE = arg("--device", default=None, help="cpu, cuda or mps (default: the best available)")
MODEL = arg("model", metavar="MODEL", help="a checkpoint folder, a run folder or a Hugging Face model folder")


# ------------------------------------------------------------------------------------------- commands


@command()
def presets(args: argparse.Namespace) -> None:
    """Print the named presets with their hyper-parameters and parameter counts (like the paper's Table 3)."""
    import torch

    from .config import PRESETS
    from .models import build_model
    from .summary import count_parameters, format_table, human

    rows = []
    for name, entry in PRESETS.items():
        c = entry.config
        with torch.device("meta"):
            n = count_parameters(build_model(c))
        layers = f"{c.n_layers}+{c.decoder_layers}" if c.family == "encoder-decoder" else str(c.n_layers)
        rows.append((name, c.family, layers, c.d_model, c.d_ff, c.n_heads, c.kv_heads, c.dropout, c.vocab_size,
                     human(n), entry.about))
    print(format_table(rows, ("preset", "family", "N", "d_model", "d_ff", "h", "kv", "dropout", "vocab", "params",
                              "")))


@command(arg("path", metavar="PATH", help="a checkpoint, run or Hugging Face folder"), DEVICE)
def info(args: argparse.Namespace) -> None:
    """Print a checkpoint's config and its parameter counts by stage."""
    from .loading import load
    from .summary import describe, parameter_table

    model = load(args.path, device=args.device or "cpu")
    print(describe(model.config))
    for key, value in model.config.to_dict().items():
        print(f"  {key:22} {value}")
    print()
    print(parameter_table(model))
    for attribute in ("tokenizer", "source_tokenizer", "target_tokenizer"):
        tokenizer = getattr(model, attribute, None)
        if tokenizer is not None:
            print(f"{attribute}: {tokenizer.get_vocab_size()} tokens")


@command(MODEL, arg("--to", choices=["hf"], default="hf", help="the format to write (hf: Hugging Face)"),
         arg("out", metavar="OUT", help="the folder to write"), DEVICE)
def export(args: argparse.Namespace) -> None:
    """Write MODEL as a Hugging Face folder that `transformers` loads with equal logits."""
    from .interop.huggingface import export_hf
    from .loading import load

    kind = export_hf(load(args.model, device="cpu"), args.out)
    print(f"wrote {args.out} (model_type {kind})")


@command(arg("recipe", nargs="?", metavar="RECIPE", help="a shipped recipe's name or a TOML file"),
         arg("--out", metavar="RUN", help="the run folder to write (default: runs/<recipe>-<time>)"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE",
             help="override a recipe field, e.g. --set training.lr=3e-4 (repeatable)"),
         arg("--resume", metavar="RUN", help="continue the run in this folder exactly where it stopped"),
         arg("--init", metavar="MODEL", help="start from these weights (fine-tuning)"), DEVICE,
         arg("--bf16", action="store_true", help="bfloat16 autocast (same as --set training.bf16=true)"),
         arg("--compile", action="store_true", help="torch.compile the training step"),
         arg("--fsdp", action="store_true", help="under torchrun: FSDP instead of DDP"),
         arg("--no-progress", action="store_true", help="no progress bar"))
def train(args: argparse.Namespace) -> None:
    """Train a recipe into a run folder (metrics.jsonl, last/, best/, averaged/)."""
    from .loading import best_device, load
    from .recipes import load_recipe
    from .training.run import default_run_dir, train_recipe

    if bool(args.recipe) == bool(args.resume):
        raise ConfigError("give a RECIPE to start a run, or --resume RUN to continue one (not both)")
    device = args.device or best_device()
    flags = [f"training.{name}=true" for name in ("bf16", "compile", "fsdp") if getattr(args, name)]
    recipe = load_recipe(args.recipe, [*args.set, *flags]) if args.recipe else None
    run_dir = args.resume or args.out or default_run_dir(recipe)
    init = load(args.init, device="cpu").train() if args.init else None
    summary = train_recipe(recipe, run_dir, device, resume=bool(args.resume), init=init,
                           progress_bar=not args.no_progress)
    print(f"run folder: {run_dir} ({summary['finished']} after {summary['train_seconds'] / 60:.1f} min, "
          f"{summary['tokens_per_second']:.0f} tokens/s)")


@command(MODEL, arg("--input", metavar="FILE", help="sentences, one per line (default: stdin)"),
         arg("--beam", type=int, help="beam size (default: the model's, 5)"),
         arg("--greedy", action="store_true", help="greedy decoding (beam 1)"),
         arg("--length-penalty", type=float, help="GNMT length penalty alpha (default 0.6)"), DEVICE)
def translate(args: argparse.Namespace) -> None:
    """Translate sentences from stdin or a file to stdout, in input order, as batches finish."""
    from .data.datasets import read_lines
    from .inference.translate import translate_stream
    from .loading import load

    model = load(args.model, device=args.device)
    lines = read_lines(args.input) if args.input else sys.stdin
    beam = 1 if args.greedy else args.beam
    for translation in translate_stream(model, lines, beam=beam, length_penalty=args.length_penalty):
        print(translation, flush=True)


@command(MODEL, arg("--split", default="test_2016_flickr", help="the Multi30k split (default test_2016_flickr)"),
         arg("--beam", type=int, help="beam size (default: the model's, 5)"),
         arg("--greedy", action="store_true", help="greedy decoding (beam 1)"),
         arg("--source-file", help="translate this file instead of a Multi30k split"),
         arg("--reference-file", help="the references for --source-file"),
         arg("--language", help="the target language of --reference-file (for tokenized BLEU)"),
         arg("--out", metavar="JSON", help="where to write the numbers (default: beside the model)"), DEVICE)
def evaluate(args: argparse.Namespace) -> None:
    """Translate a test set and print sacreBLEU, chrF and tokenized BLEU; write them as JSON."""
    import json
    from pathlib import Path

    from .loading import load, resolve
    from .tasks.translation import evaluate_split

    model = load(args.model, device=args.device)
    result = evaluate_split(model, args.split, 1 if args.greedy else args.beam, args.source_file,
                            args.reference_file, args.language)
    scores = {k: v for k, v in result.items() if k != "hypotheses"}
    for key, value in scores.items():
        print(f"{key:20} {value:.2f}" if isinstance(value, float) else f"{key:20} {value}")
    folder = resolve(args.model)
    name = f"evaluation-{Path(str(scores['split'])).name}-beam{scores['beam']}.json"
    out = Path(args.out) if args.out else folder / name
    out.write_text(json.dumps(scores, indent=2))
    print(f"wrote {out}")


@command(arg("run", metavar="RUN", help="a run folder"), arg("--out", metavar="PNG", help="default: RUN/training.png"))
def plot(args: argparse.Namespace) -> None:
    """Draw a run's training curves (loss, validation score, learning rate, throughput) to PNG."""
    from .viz import plot_training

    print(f"wrote {plot_training(args.run, args.out)}")


@command(MODEL, arg("--sentence", required=True, help="the source sentence"),
         arg("--translation", help="the target to attend over (default: the model's greedy translation)"),
         arg("--out", metavar="DIR", help="default: attention/ beside the model"), DEVICE)
def attention(args: argparse.Namespace) -> None:
    """Save heatmaps of encoder self-, decoder self- and cross-attention, per layer and head, as PNG."""
    from pathlib import Path

    from .inference.translate import translate as run_translate
    from .loading import load, resolve
    from .viz import heatmaps, translation_attention

    model = load(args.model, device=args.device or "cpu")
    translation = args.translation or run_translate(model, [args.sentence], beam=1)[0]
    weights, source_tokens, target_tokens = translation_attention(model, args.sentence, translation)
    out = Path(args.out) if args.out else resolve(args.model).parent / "attention"
    files = heatmaps(weights, source_tokens, target_tokens, out)
    print(f"translation: {translation}\nwrote {len(files)} heatmaps to {out}")


@command(arg("corpus", choices=["multi30k", "tinyshakespeare"]),
         arg("--data", metavar="DIR", help="the data directory (default: $TRANSFORMERKIT_DATA or "
                                           "~/.cache/transformerkit/data)"),
         arg("--mirror", metavar="URL", help="fetch from this base URL instead of GitHub"))
def download(args: argparse.Namespace) -> None:
    """Fetch a public corpus into the data directory's layout (files already there are kept)."""
    from pathlib import Path

    from .data.datasets import data_dir
    from .data.download import download as fetch

    root = Path(args.data) if args.data else data_dir()
    written = fetch(args.corpus, root, args.mirror)
    print(f"{args.corpus}: {len(written)} file(s) written to {root}")


GENERATION = [
    arg("--max-new-tokens", type=int, default=128),
    arg("--temperature", type=float, default=0.0, help="0 is greedy (the default); sample when above 0"),
    arg("--top-k", type=int, default=0), arg("--top-p", type=float, default=1.0),
    arg("--repetition-penalty", type=float, default=1.0),
    arg("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)"),
    arg("--seed", type=int), arg("--dtype", choices=["fp32", "bf16"], default="fp32"), DEVICE,
]
DTYPES = {"fp32": None, "bf16": "bfloat16"}


def _generation_options(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed)


def _load_for_generation(args: argparse.Namespace):
    import torch

    from .loading import load

    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    return load(args.model, device=args.device, dtype=dtype)


@command(MODEL, arg("--prompt", help="the prompt (default: all of stdin)"), *GENERATION)
def generate(args: argparse.Namespace) -> None:
    """Continue a prompt with a decoder-only model, streaming the text to stdout as it is generated."""
    from .inference.generate import generate as run_generate

    model = _load_for_generation(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise ConfigError("an empty prompt: give --prompt TEXT or text on stdin")
    run_generate(model, prompt, on_text=lambda row, piece: print(piece, end="", flush=True),
                 **_generation_options(args))
    print()


@command(MODEL, arg("--system", help="a system message"), *GENERATION)
def chat(args: argparse.Namespace) -> None:
    """Talk with an instruct model (e.g. `smollm2`): one message per line, replies stream as they come; the
    conversation is kept (the KV cache is reused between turns). End with an empty line or Ctrl-D."""
    from .inference.chat import Chat

    model = _load_for_generation(args)
    options = _generation_options(args)
    if args.max_new_tokens == 128:
        options["max_new_tokens"] = 512
    session = Chat(model, system=args.system, **options)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            break
        session.send(line.strip(), on_text=lambda piece: print(piece, end="", flush=True))
        print()


def _read_sentences(path: str | None) -> list[str]:
    from .data.datasets import read_lines

    lines = read_lines(path) if path else sys.stdin.read().splitlines()
    sentences = [line for line in lines if line.strip()]
    if not sentences:
        raise ConfigError("no sentences to embed: the input is empty")
    return sentences


def _warn_if_truncated(model, sentences: list[str]) -> None:
    """Inputs longer than the model's context are truncated (as sentence-transformers does), with a warning."""
    if model.tokenizer.truncation is None:
        model.tokenizer.enable_truncation(model.config.max_len)
    long = sum(bool(e.overflowing) for e in model.tokenizer.encode_batch(sentences))
    if long:
        limit = model.tokenizer.truncation["max_length"]
        print(f"warning: {long} sentence(s) longer than the model's {limit} tokens were truncated", file=sys.stderr)


@command(MODEL, arg("--input", metavar="FILE", help="sentences, one per line (default: stdin)"),
         arg("--out", metavar="FILE.npy", help="write a (N, d) float32 array here instead of JSON lines"),
         arg("--batch-size", type=int, default=64), DEVICE)
def embed(args: argparse.Namespace) -> None:
    """Embed sentences with an encoder (e.g. `all-minilm-l6-v2`): one vector per line, as JSON lines or .npy.
    Inputs longer than the model's context are truncated, with a warning."""
    import json

    import numpy as np

    from .loading import load

    model = load(args.model, device=args.device)
    if not hasattr(model, "embed"):
        raise ConfigError("this model is not an encoder: it cannot embed sentences")
    sentences = _read_sentences(args.input)
    _warn_if_truncated(model, sentences)
    vectors = model.embed(sentences, args.batch_size).numpy()
    if args.out:
        np.save(args.out, vectors)
        print(f"wrote {args.out}: {vectors.shape[0]} x {vectors.shape[1]}", file=sys.stderr)
    else:
        for vector in vectors:
            print(json.dumps([round(float(v), 6) for v in vector]))


@command(MODEL, arg("--corpus", required=True, metavar="FILE", help="the sentences to rank, one per line"),
         arg("--query", required=True), arg("-k", type=int, default=5, help="how many to show"),
         arg("--batch-size", type=int, default=64), DEVICE)
def similar(args: argparse.Namespace) -> None:
    """Rank a corpus's sentences by cosine similarity to a query."""
    import torch

    from .loading import load

    model = load(args.model, device=args.device)
    if not hasattr(model, "embed"):
        raise ConfigError("this model is not an encoder: it cannot embed sentences")
    corpus = _read_sentences(args.corpus)
    _warn_if_truncated(model, corpus + [args.query])
    vectors = torch.nn.functional.normalize(model.embed(corpus, args.batch_size), dim=-1)
    query = torch.nn.functional.normalize(model.embed([args.query]), dim=-1)
    scores = (vectors @ query[0]).tolist()
    for i in sorted(range(len(corpus)), key=lambda i: -scores[i])[: args.k]:
        print(f"{scores[i]:.4f}\t{corpus[i]}")


@command(arg("corpus", choices=["multi30k"]), arg("--direction", default="de-en", help="source-target, e.g. de-en"),
         arg("--budget-minutes", type=float, default=20.0, help="wall-clock training budget per model"),
         arg("--epochs", type=int, help="train every model for this many epochs instead of a time budget"),
         arg("--models", help="a comma-separated subset of lstm, gru, gru_attention, lstm_attention, transformer"),
         arg("--out", metavar="DIR", help="the experiment folder (default: runs/experiment-<direction>)"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE", help="override every model's recipe"),
         DEVICE)
def experiment(args: argparse.Namespace) -> None:
    """Train the LSTM, GRU, GRU+attention, LSTM+attention and Transformer recipes on the same data, vocabulary
    and budget; evaluate each with greedy and beam search; write results.md/.json, bleu_vs_time.png and
    attention.png. Run it again to resume: finished models are kept."""
    from pathlib import Path

    from .experiment import run_experiment

    out = Path(args.out or f"runs/experiment-{args.direction}")
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    run_experiment(out, args.direction, args.budget_minutes, args.epochs, models, args.device or "cpu",
                   extra=args.set)


@command(arg("--out", metavar="RUN", default="runs/demo", help="the demo's run folder (default runs/demo)"),
         DEVICE)
def demo(args: argparse.Namespace) -> None:
    """The main job, short: train the multi30k-de-en-demo recipe (about 10 minutes on 2 CPU cores), translate a
    few test sentences, and score the whole test set with BLEU. A finished demo run is reused; an
    interrupted one is resumed."""
    import json
    from pathlib import Path

    from .data.datasets import multi30k
    from .inference.translate import translate as run_translate
    from .loading import load
    from .recipes import load_recipe
    from .summary import describe
    from .tasks.translation import evaluate_split
    from .training.run import RECIPE_FILE, train_recipe

    run, device = Path(args.out), args.device or "cpu"
    recipe = load_recipe("multi30k-de-en-demo")
    test = multi30k("test_2016_flickr", "de", "en")  # fails early, with a hint, when the data is missing
    metrics = run / "metrics.jsonl"
    finished = metrics.exists() and "summary" in json.loads(metrics.read_text().splitlines()[-1])
    if not finished:
        resume = (run / RECIPE_FILE).exists() and (run / "last").exists()
        print(f"{'resuming' if resume else 'training'} {recipe['description']} in {run}")
        train_recipe(None if resume else recipe, run, device, resume=resume)
    model = load(run, device=device)
    print(f"\nmodel: {describe(model.config)}, {sum(p.numel() for p in model.parameters()):,} parameters")
    for source, reference, output in zip(test.sources[:5], test.targets[:5], run_translate(model, test.sources[:5])):
        print(f"\n  de:        {source}\n  reference: {reference}\n  ours:      {output}")
    scores = evaluate_split(model, "test_2016_flickr")
    print(f"\ntest_2016_flickr ({scores['sentences']} sentences, beam {scores['beam']}, "
          f"{scores['translate_seconds']:.1f} s): sacreBLEU {scores['sacrebleu']:.1f}, "
          f"tokenized BLEU {scores['bleu_tokenized']:.1f}, chrF {scores['chrf']:.1f}")
    print(f"sacreBLEU signature: {scores['sacrebleu_signature']}")


# ------------------------------------------------------------------------------------------- plumbing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="transformerkit", description="Build, train, evaluate and run Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for name, (handler, arguments) in COMMANDS.items():
        doc = (handler.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        for names, options in arguments:
            p.add_argument(*names, **options)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runtime import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return args.handler(args) or 0
    except TransformerkitError as error:
        print(f"transformerkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"transformerkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
