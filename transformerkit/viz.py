"""Pictures: training curves from metrics.jsonl, attention heatmaps and alignments, curves compared (PNG)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from .data.tokenizers import clean_text
from .errors import DataError
from .nn.attention import MultiHeadAttention


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (is {run_dir} a run folder?)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{path}:{number}: not a JSON line") from None
    return records


def pyplot():
    """matplotlib's pyplot on the Agg backend: files, never a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss (train and validation), validation BLEU or perplexity, learning rate and throughput against step."""
    plt = pyplot()
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r and "averaged" not in r]
    if not train and not evals:
        raise DataError(f"{run_dir}: metrics.jsonl has no training records yet")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (label-smoothed)")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set(title="loss per token", xlabel="step")
    ax.legend()
    ax = axes[0][1]
    quality = next((k for k in ("val_bleu", "val_accuracy", "val_ppl") if evals and k in evals[0]), None)
    if quality:
        ax.plot([r["step"] for r in evals], [r[quality] for r in evals], "o-")
    ax.set(title=f"validation {quality.removeprefix('val_') if quality else ''}", xlabel="step")
    axes[1][0].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1][0].set(title="learning rate", xlabel="step")
    axes[1][1].plot([r["step"] for r in train], [r["tokens_per_second"] for r in train])
    axes[1][1].set(title="training tokens per second", xlabel="step")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "training.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, list[MultiHeadAttention]]]:
    """Make every attention layer keep its weights (the written-out kernel runs); yields the layers by kind:
    'encoder' self-attention, 'decoder' self-attention and 'cross' attention, each in layer order."""
    layers: dict[str, list[MultiHeadAttention]] = {"encoder": [], "decoder": [], "cross": []}
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            kind = "cross" if name.endswith("cross_attn") else name.split(".")[0]
            layers.setdefault(kind, []).append(module)
            module.record_weights = True
    try:
        yield layers
    finally:
        for modules in layers.values():
            for module in modules:
                module.record_weights, module.weights = False, None


def heatmaps(weights: dict[str, list[Tensor]], source_tokens: list[str], target_tokens: list[str],
             out_dir: str | Path) -> list[Path]:
    """One PNG per attention kind and layer, a panel per head. weights[kind][layer]: (H, Tq, Tk)."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    axes_tokens = {"encoder": (source_tokens, source_tokens), "decoder": (target_tokens, target_tokens),
                   "cross": (target_tokens, source_tokens)}
    written = []
    for kind, per_layer in weights.items():
        rows, cols = axes_tokens[kind]
        for layer, w in enumerate(per_layer):
            H = w.shape[0]
            n_cols = min(H, 4)
            n_rows = (H + n_cols - 1) // n_cols
            size = max(2.5, 0.28 * max(len(rows), len(cols)))
            fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
            for h in range(n_rows * n_cols):
                ax = axes[h // n_cols][h % n_cols]
                if h >= H:
                    ax.axis("off")
                    continue
                attention_panel(ax, w[h], rows, cols, f"head {h}")
            fig.suptitle(f"{kind} attention, layer {layer}")
            fig.tight_layout()
            path = out_dir / f"{kind}-layer{layer}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            written.append(path)
    return written


def attention_panel(ax, weights: Tensor, rows: list[str], cols: list[str], title: str) -> None:
    """One head's weights (Tq, Tk) on one matplotlib axis: queries down, keys across, 0 to 1."""
    ax.imshow(weights.float().numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)


@torch.no_grad()
def translation_attention(model: nn.Module, sentence: str, translation: str) -> tuple[dict[str, list[Tensor]],
                                                                                        list[str], list[str]]:
    """Attention weights of an encoder-decoder reading `sentence` and producing `translation` (teacher forced):
    {kind: [(H, Tq, Tk) per layer]}, with the source and target token strings for the axes."""
    c = model.config
    source = model.source_tokenizer.encode(clean_text(sentence), add_special_tokens=False)
    target = model.target_tokenizer.encode(clean_text(translation), add_special_tokens=False)
    device = next(model.parameters()).device
    limit = c.max_len - 1  # a translation tokenized anew may be longer than the decoder made it: cut to its positions
    source_ids = torch.tensor([source.ids[:limit] + [c.eos_id]], device=device)
    target_ids = torch.tensor([[c.start_id] + target.ids[:limit]], device=device)
    with record_attention(model) as layers:
        model(source_ids, target_ids)
        weights = {kind: [m.weights[0].cpu() for m in modules] for kind, modules in layers.items() if modules}
    return weights, source.tokens[:limit] + ["</s>"], ["<s>"] + target.tokens[:limit]


def plot_curves(curves: dict[str, tuple[list[float], list[float]]], path: Path, xlabel: str, ylabel: str,
                title: str) -> Path:
    """One line with markers per named (x, y) series, on one axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (x, y) in curves.items():
        ax.plot(x, y, "o-", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_alignments(panels: list[tuple[str, Tensor, list[str], list[str]]], path: Path, title: str) -> Path:
    """Side-by-side alignment heatmaps: (panel title, matrix (T, S), source tokens, target tokens) each."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 6), squeeze=False)
    for ax, (name, matrix, source_tokens, target_tokens) in zip(axes[0], panels):
        ax.imshow(matrix.float().numpy(), cmap="viridis", vmin=0, vmax=float(matrix.max()))
        ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(len(target_tokens)), target_tokens, fontsize=8)
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
