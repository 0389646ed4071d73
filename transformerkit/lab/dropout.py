"""Lab `dropout`: dropout regularises, narrowing the gap between training and validation loss (note 003;
Vaswani et al., 2017, 5.4; Srivastava et al., 2014).

Character models of a small slice of Tiny Shakespeare differ only in `dropout` (0, 0.1, 0.3: on the
embeddings and on every sub-layer's output) and train for the same steps on the same windows. Both losses are
measured in eval mode (dropout off), on fixed training windows and on held-out windows, during training and
at the end: the gap between them is what fitting the training text costs. Within two minutes on two cores
the undropped model has not yet overfit (its validation loss is still falling, and the JSON's `val_rise`
says so), so part of the narrower gap is dropout slowing the fit, not only preventing memorisation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import preset
from ..models import build_model
from ..tasks.language_model import LanguageModelLoss
from .corpora import mean_loss, shakespeare
from .report import Finding, Options, verdict
from .training import train

CLAIM = "Dropout regularises: it narrows the gap between training and validation loss (note 003, 2017 paper)."
RATES = (0.0, 0.1, 0.3)
LR = 4e-3  # the same for every dropout rate


def build(vocab_size: int, context: int, dropout: float, seed: int) -> nn.Module:
    """A GPT-style character model large for its data, so that without dropout it fits the training text fast."""
    torch.manual_seed(seed)
    config = preset("gpt-tiny", vocab_size=vocab_size, d_model=128, n_heads=4, n_layers=2, d_ff=512,
                    max_len=context, dropout=dropout, attention_dropout=0.0)
    return build_model(config)


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    chars, context, batch_size, steps = (20_000, 32, 8, 15) if quick else (20_000, 64, 16, 400)
    corpus = shakespeare(context, batch_size, seed, val_batches=2 if quick else 8, chars=chars)
    held_out = corpus.val_batches()
    training_windows = [corpus.train.batch(0, i) for i in range(len(held_out))]  # as many as held out

    def evaluate(model: nn.Module) -> dict[str, float]:  # "val_" so the curve keeps both
        return {"val_loss": mean_loss(model, held_out), "val_train_loss": mean_loss(model, training_windows)}

    numbers: dict = {"train_loss": {}, "val_loss": {}, "gap": {}, "val_rise": {}, "curves": {}}
    for rate in RATES:
        model = build(corpus.vocab_size, context, rate, seed)
        curve = train(model, corpus.train, LanguageModelLoss(), steps=steps, lr=LR, warmup=20, seed=seed,
                      evaluate=evaluate, eval_every=steps // (3 if quick else 10), label=f"dropout {rate}")
        numbers["curves"][rate] = curve.to_dict()
        final = evaluate(model)
        numbers["train_loss"][rate], numbers["val_loss"][rate] = final["val_train_loss"], final["val_loss"]
        numbers["gap"][rate] = final["val_loss"] - final["val_train_loss"]
        numbers["val_rise"][rate] = final["val_loss"] - min(p["val_loss"] for p in curve.evaluations)  # overfitting

    gap, val = numbers["gap"], numbers["val_loss"]
    held = all(gap[a] > gap[b] for a, b in zip(RATES, RATES[1:]))  # each step up in dropout narrows the gap
    best = min(RATES, key=lambda r: val[r])
    conclusion = (
        f"Training a character model on {int(0.9 * chars):,} characters for {steps} steps "
        f"({steps * batch_size * context / (0.9 * chars):.0f} passes), dropout "
        f"{', '.join(str(r) for r in RATES)} ends with training loss "
        f"{', '.join(f'{loss:.2f}' for loss in numbers['train_loss'].values())}, validation loss "
        f"{', '.join(f'{val[r]:.2f}' for r in RATES)}, gap {', '.join(f'{gap[r]:.2f}' for r in RATES)} nats/char "
        f"(both in eval mode); validation loss ended {', '.join(f'{v:.2f}' for v in numbers['val_rise'].values())} "
        f"above its lowest evaluation, and lowest with dropout {best}. "
        f"{verdict(held)}.")
    settings = {"corpus": f"tinyshakespeare, first {chars:,} characters (90% training)", "context": context,
                "batch_size": batch_size, "steps": steps, "lr": LR, "warmup": 20, "rates": RATES,
                "model": "gpt-tiny, d_model 128, 4 heads, 2 layers, d_ff 512; dropout on embeddings and sub-layers",
                "windows_measured": len(held_out) * batch_size}
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers))


def figure(numbers: dict):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = dict(zip(RATES, ("tab:red", "tab:orange", "tab:green")))
    ax = axes[0]
    for rate, curve in numbers["curves"].items():
        points = curve["evaluations"]
        steps = [p["step"] for p in points]
        ax.plot(steps, [p["val_train_loss"] for p in points], "o-", color=colors[rate], label=f"{rate}: training")
        ax.plot(steps, [p["val_loss"] for p in points], "s--", color=colors[rate], label=f"{rate}: validation")
    ax.set(title="loss in eval mode, by dropout", xlabel="step", ylabel="nats per character")
    ax.legend(fontsize=8)
    ax = axes[1]
    for rate, curve in numbers["curves"].items():
        points = curve["evaluations"]
        ax.plot([p["step"] for p in points], [p["val_loss"] - p["val_train_loss"] for p in points], "o-",
                color=colors[rate], label=f"dropout {rate}")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(title="generalisation gap (validation - training)", xlabel="step", ylabel="nats per character")
    ax.legend()
    ax = axes[2]
    labels = [str(r) for r in RATES]
    for offset, key, name, color in ((-0.27, "train_loss", "training", "#9ecae1"),
                                     (0, "val_loss", "validation", "#3182bd"), (0.27, "gap", "gap", "#404040")):
        bars = ax.bar([i + offset for i in range(len(RATES))], [numbers[key][r] for r in RATES], 0.27, color=color,
                      label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(RATES)), labels)
    ax.set(title="at the end", xlabel="dropout", ylabel="nats per character")
    ax.legend()
    fig.tight_layout()
    return fig
