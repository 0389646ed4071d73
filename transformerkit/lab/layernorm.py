"""Lab `layernorm`: LayerNorm normalises each token's hidden state to mean 0 and variance 1, then scales it
by a learnable gamma and shifts it by a learnable beta, and it stabilises training (notes 001, 004; Ba et
al., 2016).

First the worked example of note 001, with the project's own code (nn/norm.py): the written-out
`layer_norm` and the LayerNorm module. The note shows only the result, normalized_x = [-1.22, 0, 1.22],
then gamma = 2 -> [-2.44, 0, 2.44] and beta = 1 -> [-1.44, 1, 3.44]; [1, 2, 3] (any three evenly spaced
numbers) normalises to it with the biased variance (divide by n) that LayerNorm uses. Then six-block
character language models on Tiny Shakespeare, identical but for the norm: post-norm (2017 paper),
pre-norm (GPT-2) and none (norm = "none": every norm the identity), trained at the same learning rates
from the same seed on the same batches, with no warmup, so each learning rate hits the model at once.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import preset
from ..models import build_model
from ..nn.norm import LayerNorm, layer_norm
from ..tasks.language_model import LanguageModelLoss
from .corpora import shakespeare
from .report import Finding, Options, verdict
from .training import Curve, train

CLAIM = ("LayerNorm normalises each token's hidden state with learnable gamma and beta, and stabilises training "
         "(notes 001, 004).")
EXAMPLE = [1.0, 2.0, 3.0]
GAMMA, BETA = 2.0, 1.0
NOTE = {"normalized": [-1.22, 0.0, 1.22], "scaled": [-2.44, 0.0, 2.44], "final": [-1.44, 1.0, 3.44]}  # note 001
VARIANTS = {"post-norm": {"norm_position": "post"}, "pre-norm": {"norm_position": "pre"},
            "no norm": {"norm": "none", "norm_position": "pre"}}
LRS = (1e-3, 1e-2, 3e-2)
LEVEL = 2.8  # a training loss per character well below the unigram's (about 3.3): the model has learnt context
SPIKE = 1.0  # nats above the best loss so far: a step that undid much of what the run had learnt


def worked_example() -> dict:
    """Note 001's numbers from nn/norm.py: the written-out function and the module (PyTorch's fused kernel)."""
    x = torch.tensor([EXAMPLE])  # (1, 3): one token's hidden state
    ones, zeros = torch.ones(3), torch.zeros(3)
    module = LayerNorm(3)
    with torch.no_grad():
        module.weight.fill_(GAMMA)
        module.bias.fill_(BETA)
        normalized = layer_norm(x, ones, zeros, module.eps)[0]  # (3,)
        result = {
            "x": EXAMPLE, "gamma": GAMMA, "beta": BETA, "eps": module.eps,
            "normalized": normalized.tolist(),
            "normalized_mean": float(normalized.mean()),
            "normalized_variance": float(normalized.var(unbiased=False)),
            "scaled": (normalized * GAMMA).tolist(),
            "final": layer_norm(x, torch.full((3,), GAMMA), torch.full((3,), BETA), module.eps)[0].tolist(),
            "final_module": module(x)[0].tolist(),
            # what dividing by the unbiased std (n - 1, torch.std's default) would give instead
            "unbiased_std_gives": ((x - x.mean()) / x.std())[0].tolist(),
        }
    result["note"] = NOTE
    # the note rounds to two places (and scales the rounded -1.22), so it is matched to 0.01
    result["matches_note"] = all(abs(a - b) <= 0.01 for key in NOTE for a, b in zip(result[key], NOTE[key]))
    return result


def build(changes: dict, vocab_size: int, seed: int, layers: int) -> nn.Module:
    """A GPT-2-style decoder (no dropout) with the variant's norm; the same seed for every variant."""
    torch.manual_seed(seed)
    config = preset("gpt-tiny", vocab_size=vocab_size, d_model=64, n_heads=4, d_ff=128, n_layers=layers, max_len=64,
                    dropout=0.0, attention_dropout=0.0, **changes)
    return build_model(config)


def outcome(curve: Curve) -> str:
    """diverged (the loss stopped being a number, or ended above where it started), converged (it went below
    LEVEL) or stalled."""
    if curve.diverged_at is not None or curve.final() > curve.losses[0]:
        return "diverged"
    return "converged" if curve.first_step_below(LEVEL) is not None else "stalled"


def spikes(curve: Curve) -> int:
    """Steps whose loss rose more than SPIKE above the best loss so far: instability short of diverging."""
    best, count = float("inf"), 0
    for loss in curve.losses:
        count += loss > best + SPIKE
        best = min(best, loss)
    return count


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    example = worked_example()
    steps, layers = (2, 2) if quick else (200, 6)
    corpus = shakespeare(context=32, batch_size=16, seed=seed, val_batches=1)
    runs = ("outcome", "steps_to_level", "final_loss", "spikes", "curves")
    numbers: dict = {"worked_example": example, **{key: {} for key in runs}}
    for name, changes in VARIANTS.items():
        for key in runs:
            numbers[key][name] = {}
        for lr in LRS:
            model = build(changes, corpus.vocab_size, seed, layers)
            curve = train(model, corpus.train, LanguageModelLoss(), steps=steps, lr=lr, seed=seed,
                          label=f"{name}, lr {lr:g}")
            numbers["outcome"][name][str(lr)] = outcome(curve)
            numbers["steps_to_level"][name][str(lr)] = curve.first_step_below(LEVEL)
            numbers["final_loss"][name][str(lr)] = curve.final()
            numbers["spikes"][name][str(lr)] = spikes(curve)
            numbers["curves"][name][str(lr)] = curve.to_dict()

    # stabler: at some learning rate the bare model diverges and both normed ones do not, and at none the reverse
    diverged = {lr: {name: numbers["outcome"][name][str(lr)] == "diverged" for name in VARIANTS} for lr in LRS}
    normed_diverged = {lr: d["post-norm"] or d["pre-norm"] for lr, d in diverged.items()}
    stabler = (any(d["no norm"] and not normed_diverged[lr] for lr, d in diverged.items())
               and not any(normed_diverged[lr] and not d["no norm"] for lr, d in diverged.items()))
    held = example["matches_note"] and stabler
    n, f = example["normalized"], example["final"]
    spiked = {name: sum(numbers["spikes"][name].values()) for name in VARIANTS}
    per_lr = "; ".join(
        f"lr {lr:g}: " + ", ".join(f"{name} {_said(numbers, name, str(lr))}" for name in VARIANTS) for lr in LRS)
    conclusion = (
        f"nn/norm.py normalises {EXAMPLE} to [{n[0]:.4f}, {n[1]:.4f}, {n[2]:.4f}] (mean "
        f"{example['normalized_mean']:.0e}, variance {example['normalized_variance']:.4f}) and, with gamma {GAMMA:g} "
        f"and beta {BETA:g}, to [{f[0]:.4f}, {f[1]:.4f}, {f[2]:.4f}]: note 001's [-1.22, 0, 1.22] and "
        f"[-1.44, 1, 3.44] {'to' if example['matches_note'] else 'NOT to'} its two decimals. {layers}-block decoders "
        f"on Tiny Shakespeare, {steps} steps, no warmup ({per_lr}; 'to {LEVEL} at step s' is when the training "
        f"loss first fell below {LEVEL}). Loss spikes (a step over {SPIKE:g} nat above the best so far), all learning "
        f"rates: {', '.join(f'{name} {total}' for name, total in spiked.items())}. "
        f"{verdict(held)}.")
    settings = {"model": f"gpt-tiny: {layers} blocks, d_model 64, 4 heads, d_ff 128, no dropout", "variants": VARIANTS,
                "learning_rates": LRS, "steps": steps, "warmup": 0, "clip_norm": 1.0, "context": 32,
                "batch_size": 16, "corpus": "Tiny Shakespeare, characters", "level": LEVEL, "spike": SPIKE}
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers))


def _said(numbers: dict, name: str, lr: str) -> str:
    """'diverged', 'stalled at 3.31' or 'to 2.8 at step 62, final 2.51': one run in words."""
    state, final = numbers["outcome"][name][lr], numbers["final_loss"][name][lr]
    if state == "diverged":
        return "diverged"
    if state == "stalled":
        return f"stalled at {final:.2f}"
    return f"to {LEVEL} at step {numbers['steps_to_level'][name][lr]}, final {final:.2f}"


def figure(numbers: dict):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(LRS) + 1, figsize=(5 * (len(LRS) + 1), 4.5))
    example = numbers["worked_example"]
    ax = axes[0]
    positions = range(len(EXAMPLE))
    for offset, key, label in ((-0.27, "x", "x"), (0.0, "normalized", "normalised"),
                               (0.27, "final", f"gamma {GAMMA:g}, beta {BETA:g}")):
        bars = ax.bar([p + offset for p in positions], example[key], width=0.27, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set(title="note 001's example through nn/norm.py", xlabel="channel", ylabel="value",
           xticks=list(positions))
    ax.legend(fontsize=8)
    for ax, lr in zip(axes[1:], LRS):
        for name in VARIANTS:
            curve = numbers["curves"][name][str(lr)]
            end = " (diverged)" if numbers["outcome"][name][str(lr)] == "diverged" else ""
            ax.plot(curve["steps"], curve["losses"], label=name + end)
        ax.axhline(LEVEL, color="gray", linestyle=":", label=f"loss {LEVEL}")
        ax.set(title=f"training loss, lr {lr:g}", xlabel="step", ylabel="loss per character", ylim=(1.5, 5.0))
        ax.legend()
    fig.tight_layout()
    return fig
