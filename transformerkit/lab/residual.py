"""Lab `residual`: residual connections keep gradients from vanishing in deep stacks and speed up training
(note 000: Y = F(X) + X, so dY/dX = F'(X) + 1 and the gradient survives even where F' is small; He et al.,
2016).

Two 24-block character language models on Tiny Shakespeare, identical but for `residual` (y = x + f(x)
around every sub-layer, or y = f(x)), with the same seed, batches and steps. The gradient of the loss
reaching each block's parameters is measured at initialisation and after training, on the same held-out
windows, with one forward and backward pass of the model's own loss; the training curves come from the
project's Trainer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import preset
from ..models import build_model
from ..tasks.language_model import LanguageModelLoss, WindowBatch
from .corpora import mean_loss, shakespeare
from .report import Finding, Options, verdict
from .training import train

CLAIM = "Residual connections keep gradients from vanishing in deep stacks and speed up training (note 000)."
VARIANTS = {"residual": True, "plain": False}  # label -> ModelConfig.residual
LAYERS, LR, WARMUP = 24, 3e-3, 20
LEVEL = 3.0  # a training loss per character well below the unigram's (about 3.3): the model reads context


def build(residual: bool, vocab_size: int, seed: int) -> nn.Module:
    """A deep, narrow GPT-2-style decoder (pre-norm, no dropout); the seed makes both variants' weights equal."""
    torch.manual_seed(seed)
    config = preset("gpt-tiny", vocab_size=vocab_size, d_model=32, n_heads=2, d_ff=64, n_layers=LAYERS, max_len=64,
                    dropout=0.0, attention_dropout=0.0, residual=residual)
    return build_model(config)


def gradient_by_block(model: nn.Module, batch: WindowBatch) -> list[float]:
    """The L2 norm of d(mean loss per character)/d(parameters) of each block, first block first."""
    model.train()
    model.zero_grad()
    loss, n = LanguageModelLoss()(model, batch)
    (loss / n).backward()
    squares = [0.0] * model.config.n_layers
    for name, parameter in model.named_parameters():
        if name.startswith("decoder.layers.") and parameter.grad is not None:
            squares[int(name.split(".")[2])] += float(parameter.grad.pow(2).sum())
    model.zero_grad()
    return [s**0.5 for s in squares]


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    steps, context, batch_size = (2, 16, 8) if quick else (150, 32, 16)
    corpus = shakespeare(context=context, batch_size=batch_size, seed=seed, val_batches=1 if quick else 8)
    probe = corpus.val.batch(0, 0)  # (B, T + 1): the same windows for every gradient measurement

    numbers: dict = {"grad_init": {}, "grad_trained": {}, "val_loss": {}, "steps_to_level": {}, "curves": {}}
    for label, residual in VARIANTS.items():
        model = build(residual, corpus.vocab_size, seed)
        numbers["grad_init"][label] = gradient_by_block(model, probe)
        curve = train(model, corpus.train, LanguageModelLoss(), steps=steps, lr=LR, warmup=min(WARMUP, steps),
                      seed=seed, label=f"{label} ({LAYERS} blocks)")
        numbers["curves"][label] = curve.to_dict()
        numbers["steps_to_level"][label] = curve.first_step_below(LEVEL)
        numbers["grad_trained"][label] = gradient_by_block(model, probe)
        numbers["val_loss"][label] = mean_loss(model, corpus.val_batches())

    # how much weaker the first block's gradient is than the last block's: 1 = no vanishing
    for when in ("init", "trained"):  # a last block with no gradient at all leaves the ratio undefined: nan
        numbers[f"first_over_last_{when}"] = {k: v[0] / v[-1] if v[-1] else float("nan")
                                              for k, v in numbers[f"grad_{when}"].items()}
    kept, vanished = numbers["first_over_last_init"]["residual"], numbers["first_over_last_init"]["plain"]
    val = numbers["val_loss"]
    reached = {k: "never" if s is None else f"at step {s}" for k, s in numbers["steps_to_level"].items()}
    held = kept > 0.1 and vanished < 1e-3 and val["residual"] < val["plain"]
    conclusion = (
        f"In a {LAYERS}-block decoder at initialisation, the first block's gradient is {kept:.2g} times the last "
        f"block's with residual connections and {vanished:.2g} times without (after {steps} steps: "
        f"{numbers['first_over_last_trained']['residual']:.2g} against "
        f"{numbers['first_over_last_trained']['plain']:.2g}). On Tiny Shakespeare the training loss fell "
        f"below {LEVEL} {reached['residual']} with them and {reached['plain']} without; after {steps} steps the "
        f"held-out loss is {val['residual']:.3f} against {val['plain']:.3f} (a character's unigram loss is "
        f"about 3.3). {verdict(held)}.")
    settings = {"model": f"gpt-tiny: {LAYERS} blocks, d_model 32, 2 heads, d_ff 64, pre-norm, no dropout",
                "corpus": "Tiny Shakespeare, characters", "context": context, "batch_size": batch_size, "steps": steps,
                "lr": LR, "warmup": min(WARMUP, steps), "gradient": "norm of d(mean loss)/d(block parameters), "
                f"one forward/backward on {batch_size} held-out windows"}
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers, steps))


def figure(numbers: dict, steps: int):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    floor = 1e-30  # a gradient that underflowed to 0 is drawn here (log scale)
    panels = ((axes[0], "grad_init", "at initialisation"), (axes[1], "grad_trained", f"after {steps} steps"))
    for ax, key, when in panels:
        for label, norms in numbers[key].items():
            ax.plot(range(len(norms)), [max(g, floor) for g in norms], "o-", markersize=3, label=label)
        ax.set(yscale="log", title=f"gradient norm by block, {when}", xlabel="block (0 = nearest the input)",
               ylabel="||d loss / d block parameters||")
        ax.legend()
    ax = axes[2]
    for label, curve in numbers["curves"].items():
        ax.plot(curve["steps"], curve["losses"], label=label)
    ax.axhline(LEVEL, color="gray", linestyle=":", label=f"loss {LEVEL}")
    ax.set(title="training loss, Tiny Shakespeare characters", xlabel="step", ylabel="loss per character")
    ax.legend()
    fig.tight_layout()
    return fig
