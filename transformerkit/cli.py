"""`transformerkit <command>`: one subcommand, one function, its docstring the help.

Library code raises typed errors (ConfigError, DataError, CheckpointError); here they become one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from .errors import ConfigError, Interrupted, TransformerkitError

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


def device_name(value: str) -> str:
    """--device: cpu, cuda[:N] or mps, and only one this machine has."""
    from .runtime import check_device

    try:
        return check_device(value)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be at least 1")
    return number


def writable(path: str, folder: bool = False) -> str:
    """An output path that can be written: its parent exists or can be made, and it is not in the way of
    something else (a file where a folder goes, or the other way round). Checked before any work is done."""
    from pathlib import Path

    target = Path(path).expanduser()
    if target.exists() and target.is_dir() != folder:
        raise argparse.ArgumentTypeError(f"{path}: already exists and is a {'file' if folder else 'folder'}, not "
                                         f"a {'folder' if folder else 'file'}")
    parent = target if folder else target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".transformerkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{path}: cannot be written ({error.strerror or error})") from None
    return path


def read_stdin() -> str:
    """stdin as text; bytes that are not UTF-8 become U+FFFD, with one warning, so every input line still
    gets its output line."""
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd".encode() not in raw:
        print("warning: the input is not valid UTF-8; the bad bytes were replaced with U+FFFD", file=sys.stderr)
    return text


def read_stdin_lines() -> list[str]:
    return read_stdin().splitlines()


DEVICE = arg("--device", default=None, type=device_name, help="cpu, cuda or mps (default: the best available)")
MODEL = arg("model", metavar="MODEL", help="a checkpoint folder, a run folder or a Hugging Face model folder")
DTYPE = arg("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
            help="auto (default): bfloat16 only where this machine multiplies it natively and faster")
QUANTIZE = arg("--quantize", choices=["auto", "gguf", "int8", "int4", "none"], default="auto",
               help="weight-only quantized layers: auto (default) keeps a GGUF file's own 4-bit weights where this "
                    "machine's kernels are faster, else none (the exact float model)")


def load_for_inference(args: argparse.Namespace, say: bool = False, expect=None):
    """MODEL on --device in --dtype: auto resolves for this machine at the model's width (see runtime.py).
    `expect(model)` refuses a model the command cannot use, before anything is said."""
    import torch

    from .loading import decoding_layout, load
    from .quantize import quantization_of
    from .runtime import choose_precision, threads_line

    quantize = getattr(args, "quantize", "none")
    model = load(args.model, device=args.device, quantize=None if quantize == "none" else quantize, layout=False)
    if expect is not None:
        expect(model)
    device = next(model.parameters()).device
    width = getattr(model.config, "d_model", None) or getattr(model.config, "hidden_size", 256)
    precision = choose_precision(args.dtype, device, width)
    if precision.bf16:
        model.to(torch.bfloat16)
    if device.type == "cpu" and quantization_of(model) is None:
        decoding_layout(model)  # after the cast: the layout is timed and packed for the dtype the model runs in
    if getattr(args, "compile", False):
        if device.type == "cpu" and quantization_of(model) is None:
            from .inference.step_graph import compile_steps

            compile_steps(model)
            if say:
                print("compiling the decoding step (on the first tokens: 5-20 s for each batch size and 64 "
                      "positions of cache)", file=sys.stderr)
        else:
            from .nn.block import compile_blocks

            compiled = compile_blocks(model)
            if say:
                print(f"compiling {compiled} blocks (once, on the first tokens)", file=sys.stderr)
    if say:
        quantized = model.quantization["kind"] if getattr(model, "quantization", None) else "none"
        print(f"precision {precision.name} ({precision.reason}); quantized {quantized}; {threads_line()}",
              file=sys.stderr)
    return model


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

    model = load(args.path, device=args.device or "cpu", layout=False)  # nothing decodes
    print(describe(model.config))
    for key, value in model.config.to_dict().items():
        print(f"  {key:22} {value}")
    print()
    print(parameter_table(model))
    for attribute in ("tokenizer", "source_tokenizer", "target_tokenizer"):
        tokenizer = getattr(model, attribute, None)
        if tokenizer is not None:
            print(f"{attribute}: {tokenizer.get_vocab_size()} tokens")


@command(MODEL, arg("out", metavar="OUT", type=lambda path: writable(path, folder=True), help="the folder to write"),
         arg("--to", choices=["int8", "int4"], required=True,
             help="int8: one scale per output row; int4: groups of --group-size (the output layer stays int8)"),
         arg("--group-size", type=int, choices=[32, 64, 128, 256], default=32))
def quantize(args: argparse.Namespace) -> None:
    """Write MODEL with weight-only quantized layers as a checkpoint (safetensors) that loads back by itself."""
    from .loading import load, resolve
    from .quantize import quantize_model, weight_bytes
    from .training.checkpoint import save

    exact = args.to == "int4" and args.group_size == 32 and resolve(args.model).suffix == ".gguf"
    # a GGUF file's 4-bit blocks stay; nothing decodes, so no decoding layout
    model = load(args.model, device="cpu", quantize="gguf" if exact else None, layout=False)
    before = weight_bytes(model)
    save(quantize_model(model, args.to, args.group_size), args.out)
    print(f"wrote {args.out}: {args.to}, {weight_bytes(model) / 1e6:.1f} MB of tensors (was {before / 1e6:.1f} MB)")


@command(MODEL, arg("--to", choices=["hf"], default="hf", help="the format to write (hf: Hugging Face)"),
         arg("out", metavar="OUT", type=lambda path: writable(path, folder=True), help="the folder to write"),
         DEVICE)
def export(args: argparse.Namespace) -> None:
    """Write MODEL as a Hugging Face folder that `transformers` loads with equal logits."""
    from .interop.huggingface import export_hf
    from .loading import load

    kind = export_hf(load(args.model, device="cpu", layout=False), args.out)
    print(f"wrote {args.out} (model_type {kind})")


@command(arg("recipe", nargs="?", metavar="RECIPE", help="a shipped recipe's name or a TOML file"),
         arg("--out", metavar="RUN", type=lambda path: writable(path, folder=True),
             help="the run folder to write (default: runs/<recipe>-<time>)"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE",
             help="override a recipe field, e.g. --set training.lr=3e-4 (repeatable); with --resume, only the "
                  "learning rate, the run's length and the evaluation and logging intervals"),
         arg("--resume", metavar="RUN", help="continue the run in this folder exactly where it stopped"),
         arg("--init", metavar="MODEL", help="start from these weights (fine-tuning)"), DEVICE,
         arg("--precision", choices=["auto", "fp32", "bf16"],
             help="auto (the recipes' default): bfloat16 autocast only where this machine runs it natively and faster"),
         arg("--bf16", action="store_true", help="shorthand for --precision bf16"),
         arg("--compile", action="store_true", help="torch.compile the training step (on the CPU it has "
             "not paid at our sizes: see README)"),
         arg("--fsdp", action="store_true", help="under torchrun: FSDP instead of DDP"),
         arg("--no-progress", action="store_true", help="no progress bar"))
def train(args: argparse.Namespace) -> None:
    """Train a recipe into a run folder (metrics.jsonl, last/, best/, averaged/)."""
    from .loading import load
    from .recipes import load_recipe
    from .runtime import best_device
    from .tasks.run import default_run_dir, train_recipe

    if bool(args.recipe) == bool(args.resume):
        raise ConfigError("give a RECIPE to start a run, or --resume RUN to continue one (not both)")
    device = args.device or best_device()
    flags = [f"training.{name}=true" for name in ("compile", "fsdp") if getattr(args, name)]
    precision = "bf16" if args.bf16 else args.precision
    if precision:
        flags.append(f'training.precision="{precision}"')
    recipe = load_recipe(args.recipe, [*args.set, *flags]) if args.recipe else None
    run_dir = args.resume or args.out or default_run_dir(recipe)
    init = load(args.init, device="cpu", for_training=True) if args.init else None
    summary = train_recipe(recipe, run_dir, device, resume=bool(args.resume), init=init,
                           progress_bar=not args.no_progress, overrides=[*args.set, *flags] if args.resume else [])
    print(f"run folder: {run_dir} ({summary['finished']} after {summary['train_seconds'] / 60:.1f} min, "
          f"{summary['tokens_per_second']:.0f} tokens/s)")


@command(MODEL, arg("--input", metavar="FILE", help="sentences, one per line (default: stdin)"),
         arg("--beam", type=positive_int, help="beam size (default: the model's, 5)"),
         arg("--greedy", action="store_true", help="greedy decoding (beam 1)"),
         arg("--length-penalty", type=float, help="GNMT length penalty alpha (default: the model's)"), DTYPE,
         QUANTIZE, DEVICE)
def translate(args: argparse.Namespace) -> None:
    """Translate sentences from stdin or a file to stdout, in input order, as batches finish."""
    from .data.datasets import read_lines
    from .inference.translate import translate_stream

    model = load_for_inference(args)
    lines = read_lines(args.input) if args.input else read_stdin_lines()
    beam = 1 if args.greedy else args.beam
    for translation in translate_stream(model, lines, beam=beam, length_penalty=args.length_penalty):
        print(translation, flush=True)


@command(MODEL, arg("--split", default="test_2016_flickr", help="the Multi30k split (default test_2016_flickr)"),
         arg("--beam", type=positive_int, help="beam size (default: the model's, 5)"),
         arg("--greedy", action="store_true", help="greedy decoding (beam 1)"),
         arg("--source-file", help="translate this file instead of a Multi30k split"),
         arg("--reference-file", help="the references for --source-file"),
         arg("--language", help="the target language of --reference-file (for tokenized BLEU)"),
         arg("--length-penalty", type=float, help="GNMT length penalty alpha (default: the model's)"),
         arg("--out", metavar="JSON", type=writable,
             help="where to write the numbers (default: in the run folder, or beside the checkpoint)"), DTYPE, DEVICE)
def evaluate(args: argparse.Namespace) -> None:
    """Translate a test set and print sacreBLEU, chrF and tokenized BLEU; write them as JSON."""
    import json
    from pathlib import Path

    from .evaluation.test_set import evaluate_split
    from .loading import resolve, run_folder_of

    model = load_for_inference(args)
    result = evaluate_split(model, args.split, 1 if args.greedy else args.beam, args.source_file,
                            args.reference_file, args.language, args.length_penalty)
    scores = {k: v for k, v in result.items() if k != "hypotheses"}
    for key, value in scores.items():
        print(f"{key:20} {value:.2f}" if isinstance(value, float) else f"{key:20} {value}")
    folder = run_folder_of(args.model) or resolve(args.model)  # never inside averaged/: training replaces it
    penalty = f"-lp{scores['length_penalty']:g}" if scores["beam"] > 1 else ""  # it changes a beam's output
    name = f"evaluation-{Path(str(scores['split'])).name}-beam{scores['beam']}{penalty}.json"
    out = Path(args.out) if args.out else folder / name
    out.write_text(json.dumps(scores, indent=2))
    print(f"wrote {out}")


@command(arg("run", metavar="RUN", help="a run folder"),
         arg("--out", metavar="PNG", type=writable, help="default: RUN/training.png"))
def plot(args: argparse.Namespace) -> None:
    """Draw a run's training curves (loss, validation score, learning rate, throughput) to PNG."""
    from .viz import plot_training

    print(f"wrote {plot_training(args.run, args.out)}")


@command(MODEL, arg("--sentence", required=True, help="the source sentence"),
         arg("--translation", help="the target to attend over (default: the model's greedy translation)"),
         arg("--out", metavar="DIR", type=lambda path: writable(path, folder=True),
             help="default: attention/ beside the model"), DEVICE)
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
    arg("--seed", type=int), DTYPE, QUANTIZE, DEVICE,
    arg("--compile", action="store_true", help="compile the decoding step whole (a float model on the CPU; "
        "5-20 s on the first tokens) or the model's blocks (a quantized model, a GPU; about half a minute): "
        "faster decoding for long outputs and conversations"),
]


def _generation_options(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed)


@command(MODEL, arg("--prompt", help="the prompt (default: all of stdin)"), *GENERATION)
def generate(args: argparse.Namespace) -> None:
    """Continue a prompt with a decoder-only model, streaming the text to stdout as it is generated."""
    from .inference.generate import GenerationOptions
    from .inference.generate import generate as run_generate

    GenerationOptions(**_generation_options(args))  # bad options fail before the model is loaded
    prompt = args.prompt if args.prompt is not None else read_stdin()
    if not prompt:
        raise ConfigError("an empty prompt: give --prompt TEXT or text on stdin")
    model = load_for_inference(args, say=True, expect=_language_model)
    run_generate(model, prompt, on_text=lambda row, piece: print(piece, end="", flush=True),
                 **_generation_options(args))
    print()


def _language_model(model):
    """The model, if it generates text from a prompt; otherwise a ConfigError naming the command that fits."""
    family = getattr(model.config, "family", "encoder-decoder")
    if family == "encoder-decoder":
        raise ConfigError("this model translates (an encoder-decoder): use `transformerkit translate MODEL`")
    if family == "encoder":
        raise ConfigError("this model is an encoder: use `transformerkit embed MODEL` or `similar`")
    return model


@command(MODEL, arg("--system", help="a system message"), *GENERATION)
def chat(args: argparse.Namespace) -> None:
    """Talk with an instruct model (e.g. `smollm2`): one message per line, replies stream as they come; the
    conversation is kept (the KV cache is reused between turns). End with an empty line or Ctrl-D."""
    from .inference.chat import Chat
    from .inference.generate import GenerationOptions

    GenerationOptions(**_generation_options(args))  # bad options fail before the model is loaded
    model = load_for_inference(args, say=True, expect=_language_model)
    options = _generation_options(args)
    if args.max_new_tokens == 128:
        options["max_new_tokens"] = 512
    session = Chat(model, system=args.system, **options)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        raw = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else sys.stdin.readline().encode()
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            break
        session.send(line.strip(), on_text=lambda piece: print(piece, end="", flush=True))
        print()


def _read_sentences(path: str | None, keep_blank: bool = False) -> list[str]:
    """The input's lines: all of them (one output row per input line), or only the non-blank ones."""
    from .data.datasets import read_lines

    lines = read_lines(path) if path else read_stdin_lines()
    if not any(line.strip() for line in lines):
        raise ConfigError("no sentences to embed: the input is empty")
    return lines if keep_blank else [line for line in lines if line.strip()]


def _warn_if_truncated(model, sentences: list[str]) -> None:
    """Inputs longer than the model's context are truncated (as sentence-transformers does), with a warning."""
    from .data.tokenizers import clean_text

    if model.tokenizer.truncation is None:
        model.tokenizer.enable_truncation(model.config.max_len)
    long = sum(bool(e.overflowing) for e in model.tokenizer.encode_batch([clean_text(s) for s in sentences]))
    if long:
        limit = model.tokenizer.truncation["max_length"]
        print(f"warning: {long} sentence(s) longer than the model's {limit} tokens were truncated", file=sys.stderr)


@command(MODEL, arg("--input", metavar="FILE", help="sentences, one per line (default: stdin)"),
         arg("--out", metavar="FILE.npy", type=writable,
             help="write a (N, d) float32 array here instead of JSON lines"),
         arg("--batch-size", type=positive_int, default=64), DTYPE, QUANTIZE, DEVICE)
def embed(args: argparse.Namespace) -> None:
    """Embed sentences with an encoder (e.g. `all-minilm-l6-v2`): one vector per input line (a blank line too),
    as JSON lines or .npy. Inputs longer than the model's context are truncated, with a warning."""
    import json

    import numpy as np

    model = load_for_inference(args)
    if not hasattr(model, "embed"):
        raise ConfigError("this model is not an encoder: it cannot embed sentences")
    sentences = _read_sentences(args.input, keep_blank=True)
    _warn_if_truncated(model, sentences)
    vectors = model.embed(sentences, args.batch_size).numpy()
    if args.out:
        np.save(args.out, vectors)
        print(f"wrote {args.out}: {vectors.shape[0]} x {vectors.shape[1]}", file=sys.stderr)
    else:
        for vector in vectors:
            print(json.dumps([round(float(v), 6) for v in vector]))


@command(MODEL, arg("--corpus", required=True, metavar="FILE", help="the sentences to rank, one per line"),
         arg("--query", required=True), arg("-k", type=positive_int, default=5, help="how many to show"),
         arg("--batch-size", type=positive_int, default=64), DTYPE, QUANTIZE, DEVICE)
def similar(args: argparse.Namespace) -> None:
    """Rank a corpus's sentences by cosine similarity to a query."""
    import torch

    model = load_for_inference(args)
    if not hasattr(model, "embed"):
        raise ConfigError("this model is not an encoder: it cannot embed sentences")
    corpus = _read_sentences(args.corpus)
    _warn_if_truncated(model, corpus + [args.query])
    vectors = torch.nn.functional.normalize(model.embed(corpus, args.batch_size), dim=-1)
    query = torch.nn.functional.normalize(model.embed([args.query]), dim=-1)
    scores = (vectors @ query[0]).tolist()
    for i in sorted(range(len(corpus)), key=lambda i: -scores[i])[: args.k]:
        print(f"{scores[i]:.4f}\t{corpus[i]}")


def port_number(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port; it must be 1 to 65535")
    return number


@command(arg("models", nargs="+", metavar="MODEL",
             help="models to serve (any MODEL, as elsewhere); NAME=MODEL sets its id (default: its alias or folder)"),
         arg("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)"),
         arg("--port", type=port_number, default=8000),
         arg("--api-key", default=os.environ.get("TRANSFORMERKIT_API_KEY"),
             help="require 'Authorization: Bearer KEY' on the API (default: $TRANSFORMERKIT_API_KEY, else none)"),
         arg("--max-batch", type=positive_int, default=16, help="sequences one model decodes at once (default 16)"),
         DTYPE, QUANTIZE, DEVICE)
def serve(args: argparse.Namespace) -> None:
    """Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/embeddings, and
    /v1/translations/text) with continuous batching, and a web page at / to chat, translate (with the attention
    heatmap) and search. --dtype fp32 --quantize none serves the exact float32 models."""
    try:
        from .serve.app import check_address, create_app, run
        from .serve.registry import model_id
    except ImportError as error:
        raise ConfigError(f"the server needs its extra ({error.name} is missing): pip install "
                          "'transformerkit[serve]'") from None
    check_address(args.host, args.port)
    models = {}
    for item in args.models:
        name, path = item.split("=", 1) if "=" in item and not os.path.exists(item) else (None, item)
        name = name or model_id(path)
        if name in models:
            raise ConfigError(f"two models would both be '{name}': give one an id with NAME={path}")
        models[name] = load_for_inference(argparse.Namespace(**{**vars(args), "model": path}), say=True)
    app = create_app(models, args.api_key, args.max_batch)
    for served in app.state.registry.models.values():
        print(f"{served.id}: {', '.join(served.capabilities)}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who reaches it can use the models",
              file=sys.stderr)
    print(f"serving on http://{args.host}:{args.port}/ (the page) and /v1 (the API); Ctrl-C stops", file=sys.stderr)
    run(app, args.host, args.port)


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


@command(arg("name", nargs="?", metavar="NAME", help="the lab to run (see --list)"),
         arg("--list", action="store_true", help="print every lab and the claim it tests"),
         arg("--quick", action="store_true", help="the same experiment shrunk to seconds (what the tests run)"),
         arg("--seed", type=int, default=0),
         arg("--model", metavar="RUN", help="a trained run to study instead of training one (labs that can)"),
         arg("--out", metavar="DIR", default=".", type=lambda path: writable(path, folder=True),
             help="where lab-NAME.json and lab-NAME.png go (default: here)"))
def lab(args: argparse.Namespace) -> None:
    """Measure one of the study notes' claims with a small controlled experiment (about two minutes on two
    cores): writes lab-NAME.json (the numbers, settings, seed and machine) and lab-NAME.png, and prints the
    conclusion the numbers support, including "did not hold here"."""
    from .lab import claims, run_lab
    from .lab.report import Options

    if args.list or not args.name:
        for name, claim in claims().items():
            print(f"{name:16} {claim}")
        return
    finding, json_path, png_path = run_lab(args.name, args.out, Options(args.quick, args.seed, args.model))
    print(f"\n{args.name}: {finding.conclusion}\n\nwrote {json_path} and {png_path}")


@command(arg("--out", metavar="RUN", default="runs/demo", help="the demo's run folder (default runs/demo)"),
         DEVICE)
def demo(args: argparse.Namespace) -> int:
    """The main job, short: train the multi30k-de-en-demo recipe (a 10-minute budget, whatever the machine),
    translate a few test sentences, and score the whole test set with BLEU. A finished demo run is reused; an
    interrupted one is resumed. Exits 1 when the model failed to learn."""
    import json
    from pathlib import Path

    from .data.datasets import multi30k
    from .evaluation.test_set import evaluate_split
    from .inference.translate import translate as run_translate
    from .loading import load
    from .recipes import load_recipe
    from .runtime import cpu_name, threads_line
    from .summary import describe
    from .tasks.run import RECIPE_FILE, train_recipe

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
    summary = json.loads(metrics.read_text().splitlines()[-1])["summary"]
    if scores["sacrebleu"] < DEMO_FLOOR:
        print(f"transformerkit demo: error: the model failed to learn (test sacreBLEU {scores['sacrebleu']:.1f} after "
              f"{summary['step']} steps in {summary['train_seconds'] / 60:.1f} min at "
              f"{summary['tokens_per_second']:,.0f} tokens/s in {summary.get('precision', '?')}); see {metrics}",
              file=sys.stderr)
        return 1
    print(f"\ndemo: {cpu_name()}, {summary.get('precision', '?')}, {threads_line()}, trained "
          f"{summary['train_seconds'] / 60:.1f} min ({summary['step']} steps), "
          f"test sacreBLEU {scores['sacrebleu']:.1f}")
    return 0


DEMO_FLOOR = 5.0  # test sacreBLEU below this: the demo's model did not learn to translate


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
    from .runtime import choose_threads, keep_freed_memory, matmul_choice

    args = build_parser().parse_args(argv)
    keep_freed_memory()
    choose_threads()
    try:
        matmul_choice()
        return args.handler(args) or 0
    except Interrupted as interrupted:  # a checkpoint was saved: not an error
        print(f"transformerkit {args.command}: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    except TransformerkitError as error:
        print(f"transformerkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"transformerkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
