"""Lab `heads`: multi-head attention lets heads attend to different things (note 002; Vaswani et al., 2017, 3.2.2).

First, at equal parameters: translators of Multi30k German -> English that differ only in n_heads (1, 4, 8 at
the same d_model, so the projections have the same shapes and the same number of weights; only how they are
split differs) train for the same steps on the same batches and are compared by validation loss. Then, what
the heads of a trained translator (`--model RUN`, else the 4-head one trained here) do: per-head heatmaps
(viz.translation_attention, the `transformerkit attention` command's weights) and, over test sentences, each
head's entropy and mean attention distance and the Jensen-Shannon divergence between the heads of a layer
(0 bits: the same distribution; 1 bit: disjoint). The same numbers for the same architecture untrained say
how much of the difference training made.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from ..config import preset
from ..data.tokenizers import special_ids
from ..errors import ConfigError
from ..loading import load
from ..models import EncoderDecoder, build_model
from ..tasks.translation import TranslationLoss
from ..viz import attention_panel, translation_attention
from .corpora import multi30k_de_en
from .report import Finding, Options, verdict
from .training import train

READS_MODEL = True  # --model RUN: study the heads of a trained translator
CLAIM = "Multi-head attention lets different heads attend to different things (note 002)."
HEADS = (1, 4, 8)
SHOWN = 4  # heads drawn per layer in the figure


def build(n_heads: int, tokenizer, seed: int) -> nn.Module:
    """The same small 2017-style translator (d_model 64, 2 + 2 layers) with its d_model split into n_heads."""
    torch.manual_seed(seed)
    config = preset("transformer-tiny", vocab_size=tokenizer.get_vocab_size(), n_heads=n_heads, dropout=0.1,
                    max_len=128, **special_ids(tokenizer))
    return build_model(config)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits between rows of distributions (..., K) -> (...), in [0, 1]."""
    m = (p + q) / 2
    kl = lambda a: (a * (a.clamp_min(1e-12) / m.clamp_min(1e-12)).log2()).sum(-1)  # noqa: E731
    return (kl(p) + kl(q)) / 2


def head_statistics(model: nn.Module, sources: list[str], targets: list[str]) -> dict[str, list[dict]]:
    """{kind: [per layer: mean pairwise JS between its heads (bits), each head's entropy (bits) and, for
    self-attention, its mean distance |query - key| in tokens]}, averaged over the sentence pairs."""
    sums: dict[str, list[dict[str, Tensor]]] = {}
    for source, target in zip(sources, targets):
        weights, _, _ = translation_attention(model, source, target)  # {kind: [(H, Tq, Tk) per layer]}
        for kind, layers in weights.items():
            rows = sums.setdefault(kind, [{} for _ in layers])
            for row, w in zip(rows, layers):
                H, Tq, Tk = w.shape
                pairs = list(itertools.combinations(range(H), 2))
                stats = {"entropy": -(w * w.clamp_min(1e-12).log2()).sum(-1).mean(-1),  # (H,)
                         "js": torch.stack([js_divergence(w[a], w[b]).mean() for a, b in pairs]).mean()
                         if pairs else torch.tensor(0.0)}
                if kind != "cross":
                    offsets = (torch.arange(Tq)[:, None] - torch.arange(Tk)[None]).abs().float()  # (Tq, Tk)
                    stats["distance"] = (w * offsets).sum(-1).mean(-1)  # (H,)
                for key, value in stats.items():
                    row[key] = row.get(key, 0) + value
    return {kind: [{key: (value / len(sources)).tolist() for key, value in row.items()} for row in rows]
            for kind, rows in sums.items()}


def given_translator(options: Options) -> nn.Module | None:
    """The run given with --model, loaded and checked before anything trains (a wrong path fails at once)."""
    if options.model is None:
        return None
    model = load(options.model, device="cpu")
    if not isinstance(model, EncoderDecoder):
        raise ConfigError(f"--model: lab heads needs a translation (encoder-decoder) run; {options.model} is not one")
    return model


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    given = given_translator(options)
    pairs, steps, sentences, validation = (1_000, 10, 5, 20) if quick else (10_000, 400, 60, 200)
    corpus = multi30k_de_en(pairs, vocab_size=500 if quick else 2000, batch_tokens=600 if quick else 1200,
                            seed=seed, val_sentences=validation, test_sentences=sentences)
    numbers: dict = {"val_loss": {}, "val_bleu": {}, "parameters": {}, "curves": {}}
    models = {}
    for n_heads in HEADS:
        model = corpus.attach(build(n_heads, corpus.tokenizer, seed))
        numbers["parameters"][n_heads] = sum(p.numel() for p in model.parameters())
        curve = train(model, corpus.data, TranslationLoss(0.1), steps=steps, lr=2e-3, warmup=50, seed=seed,
                      label=f"{n_heads} head{'s' if n_heads > 1 else ''}")
        numbers["curves"][n_heads] = curve.to_dict()
        scores = corpus.evaluate(model)
        numbers["val_loss"][n_heads], numbers["val_bleu"][n_heads] = scores["val_loss"], scores["val_bleu"]
        models[n_heads] = model

    studied, described = ((given, f"the translator of {options.model}") if given is not None
                          else (models[4], "the 4-head translator trained here"))
    torch.manual_seed(seed)
    untrained = build_model(studied.config).eval()  # the same architecture before training: the baseline
    untrained.source_tokenizer, untrained.target_tokenizer = studied.source_tokenizer, studied.target_tokenizer
    test = corpus.test
    numbers["heads"] = head_statistics(studied, test.sources, test.targets)
    numbers["heads_untrained"] = head_statistics(untrained, test.sources, test.targets)
    js = {name: {kind: [row["js"] for row in layers] for kind, layers in numbers[name].items()}
          for name in ("heads", "heads_untrained")}
    spread = {kind: max(js["heads"][kind]) for kind in js["heads"]}  # the most varied layer of each kind
    baseline = max(max(layers) for layers in js["heads_untrained"].values())
    layers = [(t, u) for kind in js["heads"] for t, u in zip(js["heads"][kind], js["heads_untrained"][kind])]
    apart = sum(t > u for t, u in layers)  # layers whose heads differ more after training than before

    loss, bleu = numbers["val_loss"], numbers["val_bleu"]
    best = min(HEADS[1:], key=lambda h: loss[h])
    helps = loss[best] < loss[1]
    differ = max(spread.values()) > 0.1 and apart == len(layers)  # clearly apart, and more than before training
    held = helps and differ
    distances = [d for row in numbers["heads"]["encoder"] for d in row["distance"]]
    conclusion = (
        f"At equal parameters ({numbers['parameters'][1]:,} each) and {steps} steps, validation loss with "
        f"1, 4 and 8 heads: {', '.join(f'{loss[h]:.3f}' for h in HEADS)} (greedy BLEU "
        f"{', '.join(f'{bleu[h]:.1f}' for h in HEADS)}): {best} heads {'beat' if helps else 'did not beat'} one. "
        f"In {described}, heads of one layer differ by up to "
        f"{', '.join(f'{spread[k]:.2f} bits ({k})' for k in spread)} of Jensen-Shannon divergence over "
        f"{len(test.sources)} test sentences (untrained: up to {baseline:.2f}; more after training than before in "
        f"{apart} of {len(layers)} layers); encoder heads' mean attention "
        f"distance ranges from {min(distances):.1f} to {max(distances):.1f} tokens. {verdict(held)}.")
    settings = {"data": f"Multi30k de-en, first {pairs:,} training pairs, joint BPE", "steps": steps, "lr": 2e-3,
                "warmup": 50, "label_smoothing": 0.1, "heads": HEADS, "validation_sentences": validation,
                "model": "transformer-tiny: d_model 64, d_ff 128, 2 + 2 layers, post-norm, dropout 0.1",
                "studied": described, "test_sentences": len(test.sources)}
    notes = [] if options.model is None else [f"heatmaps and head statistics from {options.model}"]
    sentence = (test.sources[0], test.targets[0])
    return Finding(CLAIM, held, conclusion, numbers, settings,
                   figure(numbers, translation_attention(studied, *sentence), described), notes)


def figure(numbers: dict, attention: tuple[dict[str, list[Tensor]], list[str], list[str]], described: str):
    from ..viz import pyplot

    plt = pyplot()
    weights, source_tokens, target_tokens = attention
    panels = [("encoder", 0, source_tokens, source_tokens), ("cross", len(weights["cross"]) - 1, target_tokens,
                                                              source_tokens)]
    fig = plt.figure(figsize=(4 * SHOWN, 4 * (1 + len(panels))))
    grid = fig.add_gridspec(1 + len(panels), SHOWN)
    ax = fig.add_subplot(grid[0, 0])
    for n_heads, curve in numbers["curves"].items():
        ax.plot(curve["steps"], curve["losses"], alpha=0.7, label=f"{n_heads} head(s)")
    ax.set(title="training loss (label-smoothed)", xlabel="step", ylabel="loss per token")
    ax.legend()
    ax = fig.add_subplot(grid[0, 1])
    bars = ax.bar([str(h) for h in numbers["val_loss"]], list(numbers["val_loss"].values()), color="tab:green")
    ax.bar_label(bars, labels=[f"{v:.3f}\nBLEU {b:.1f}" for v, b in zip(numbers["val_loss"].values(),
                                                                       numbers["val_bleu"].values())], fontsize=8)
    ax.set(title="validation loss at equal parameters", xlabel="heads", ylabel="loss per token")
    ax.set_ylim(0, 1.2 * max(numbers["val_loss"].values()))
    ax = fig.add_subplot(grid[0, 2])
    labels = [f"{kind} L{i}" for kind, layers in numbers["heads"].items() for i in range(len(layers))]
    for offset, (name, label) in zip((-0.2, 0.2), (("heads", "trained"), ("heads_untrained", "untrained"))):
        values = [row["js"] for layers in numbers[name].values() for row in layers]
        ax.bar([i + offset for i in range(len(values))], values, 0.4, label=label)
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    ax.set(title="how much heads of a layer differ\n(mean pairwise Jensen-Shannon)", ylabel="bits")
    ax.legend()
    ax = fig.add_subplot(grid[0, 3])
    for i, row in enumerate(numbers["heads"]["encoder"]):
        ax.scatter(row["distance"], row["entropy"], label=f"encoder layer {i}, trained")
    for i, row in enumerate(numbers["heads_untrained"]["encoder"]):
        ax.scatter(row["distance"], row["entropy"], marker="x", color="gray", label="untrained" if i == 0 else None)
    ax.set(title="each encoder head: reach and spread", xlabel="mean attention distance (tokens)",
           ylabel="entropy (bits)")
    ax.legend(fontsize=8)
    for r, (kind, layer, rows, cols) in enumerate(panels, 1):
        w = weights[kind][layer]  # (H, Tq, Tk)
        for h in range(SHOWN):
            ax = fig.add_subplot(grid[r, h])
            if h >= w.shape[0]:
                ax.axis("off")
                continue
            attention_panel(ax, w[h], rows, cols, f"{kind} layer {layer}, head {h}")
    fig.suptitle(f"heads of {described}")
    fig.tight_layout()
    return fig
