"""`transformerkit <command>`: one subcommand, one function, its docstring the help.

Library code raises typed errors (ConfigError, DataError, CheckpointError); here they become one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from .errors import TransformerkitError

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


@command(DEVICE)
def demo(args: argparse.Namespace) -> None:
    """Build each family from a preset, print its parameter table and run a forward pass."""
    import torch

    from .config import preset
    from .models import build_model
    from .summary import describe, parameter_table

    torch.manual_seed(0)
    for name in ("transformer-small", "gpt2-small", "llama-tiny", "bert-base"):
        config = preset(name)
        model = build_model(config).eval()
        print(f"== {name}: {describe(config)}\n{parameter_table(model)}")
        ids = torch.randint(3, config.vocab_size, (2, 16))
        start = time.perf_counter()
        with torch.no_grad():
            out = model(ids, ids) if config.family == "encoder-decoder" else model(ids)
        print(f"forward pass: input {tuple(ids.shape)} -> output {tuple(out.shape)} "
              f"in {1000 * (time.perf_counter() - start):.0f} ms\n")


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
    args = build_parser().parse_args(argv)
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
