"""Lab `scaling`: dividing attention scores by sqrt(d_k) keeps softmax out of saturation (note 002; Vaswani et
al., 2017, section 3.2.1: for q and k with unit-variance entries, q . k has variance d_k).

First, on random q and k: the project's `scaled_dot_product_attention` with its 1/sqrt(d_k) and with
`scale=1.0` (no division), for head widths d_k from 8 to 512. Measured: the entropy of each query's
attention weights as a share of its maximum (log of the number of keys: uniform attention), and the size of
the gradient softmax passes back to the scores, the Frobenius norm of its Jacobian diag(p) - p p^T for the
median query (0 when the weights are one-hot: a saturated softmax stops learning). Then, trained: two
character language models with one wide head (d_k = 256), identical but for `scale_attention`, on Tiny
Shakespeare; their attention entropy read with viz.record_attention before and after.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import preset
from ..models import build_model
from ..nn.attention import scaled_dot_product_attention
from ..tasks.language_model import LanguageModelLoss
from ..viz import record_attention
from .corpora import mean_loss, shakespeare
from .report import Finding, Options, ratio, verdict
from .training import train

CLAIM = "Dividing attention scores by sqrt(d_k) keeps softmax out of saturation (note 002)."
WIDTHS = (8, 16, 32, 64, 128, 256, 512)
VARIANTS = {"scaled": True, "unscaled": False}  # label -> ModelConfig.scale_attention
HEAD_WIDTH, LR = 256, 3e-3


def entropy_share(weights: Tensor, keys: Tensor) -> float:
    """Mean over queries of entropy(weights) / log(keys a query may attend to): 1 = uniform, 0 = one-hot.
    weights (..., Tq, Tk); keys (Tq,) the count of allowed keys of each query (rows with one key are skipped,
    their entropy is 0 whatever the scores)."""
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)  # (..., Tq)
    rows = keys > 1
    return float((entropy[..., rows] / keys[rows].log()).mean())


def softmax_jacobian_norm(weights: Tensor) -> float:
    """||diag(p) - p p^T||_F, how much a change in the scores still moves the weights, for the median query
    (the few queries whose top two scores nearly tie would dominate a mean)."""
    jacobian = torch.diag_embed(weights) - weights[..., :, None] * weights[..., None, :]  # (..., Tq, Tk, Tk)
    return float(jacobian.flatten(-2).norm(dim=-1).median())


def random_scores(seed: int, quick: bool) -> dict:
    """Entropy share and softmax gradient by d_k, with and without the division, on unit-variance q and k."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads, length = (2, 2, 16) if quick else (8, 4, 32)
    result: dict = {"entropy": {}, "jacobian": {}}
    for label, scaled in VARIANTS.items():
        result["entropy"][label], result["jacobian"][label] = [], []
        for d in WIDTHS:
            q, k, v = (torch.randn(batch, heads, length, d, generator=generator) for _ in range(3))  # (B, H, T, D)
            _, weights = scaled_dot_product_attention(q, k, v, scale=None if scaled else 1.0)  # (B, H, T, T)
            result["entropy"][label].append(entropy_share(weights, torch.full((length,), length)))
            result["jacobian"][label].append(softmax_jacobian_norm(weights))
    result["settings"] = {"batch": batch, "heads": heads, "queries_and_keys": length}
    return result


def build(scaled: bool, vocab_size: int, seed: int) -> nn.Module:
    """A 2-block decoder with one head of width 256 and the 2017 paper's Xavier initialisation, under which
    unscaled scores of a width-256 head start with a spread of several units (GPT-2's N(0, 0.02) would start
    them near 0 and hide the effect until training grows the weights). The same seed for both variants."""
    torch.manual_seed(seed)
    config = preset("gpt-tiny", vocab_size=vocab_size, d_model=128, n_heads=1, head_dim=HEAD_WIDTH, d_ff=256,
                    n_layers=2, max_len=64, dropout=0.0, attention_dropout=0.0, init="xavier", scale_attention=scaled)
    return build_model(config)


@torch.no_grad()
def model_entropy(model: nn.Module, ids: Tensor) -> float:
    """Entropy share of the model's causal self-attention on ids (B, T), over all layers and queries."""
    model.eval()
    with record_attention(model) as layers:
        model(ids)
        keys = torch.arange(1, ids.shape[1] + 1)  # query i may attend to i + 1 keys
        return sum(entropy_share(layer.weights, keys) for layer in layers["decoder"]) / len(layers["decoder"])


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    numbers = random_scores(seed, quick)
    settings = {"widths": WIDTHS, "random_qk": numbers.pop("settings")}

    steps, context = (4, 32) if quick else (200, 64)
    corpus = shakespeare(context=context, batch_size=16, seed=seed, val_batches=1 if quick else 8)
    probe = corpus.val.batch(0, 0).ids[:, :-1]  # (16, context) held-out windows whose attention is read
    numbers.update({"model_entropy_init": {}, "model_entropy_trained": {}, "val_loss": {}, "curves": {}})
    for label, scaled in VARIANTS.items():
        model = build(scaled, corpus.vocab_size, seed)
        numbers["model_entropy_init"][label] = model_entropy(model, probe)
        curve = train(model, corpus.train, LanguageModelLoss(), steps=steps, lr=LR, warmup=min(10, steps),
                      seed=seed, label=f"{label} attention, d_k {HEAD_WIDTH}")
        numbers["curves"][label] = curve.to_dict()
        numbers["model_entropy_trained"][label] = model_entropy(model, probe)
        numbers["val_loss"][label] = mean_loss(model, corpus.val_batches())
    settings.update({"model": f"gpt-tiny: 2 blocks, d_model 128, 1 head of width {HEAD_WIDTH}, d_ff 256, pre-norm, "
                              "xavier init, no dropout", "corpus": "Tiny Shakespeare, characters", "context": context,
                     "batch_size": 16, "steps": steps, "lr": LR, "warmup": min(10, steps)})

    entropy, jacobian = numbers["entropy"], numbers["jacobian"]
    falls = all(a > b for a, b in zip(entropy["unscaled"], entropy["unscaled"][1:]))
    stays = min(entropy["scaled"]) > 0.8
    starved = jacobian["unscaled"][-1] < jacobian["scaled"][-1] / 10
    trained_better = numbers["val_loss"]["scaled"] < numbers["val_loss"]["unscaled"]
    held = falls and stays and starved and trained_better
    e, val = numbers["model_entropy_trained"], numbers["val_loss"]
    conclusion = (
        f"On random unit-variance q and k, the attention entropy (share of uniform) with the 1/sqrt(d_k) factor "
        f"stays between {min(entropy['scaled']):.3f} and {max(entropy['scaled']):.3f} for d_k {WIDTHS[0]}-"
        f"{WIDTHS[-1]}; without it, it falls from {entropy['unscaled'][0]:.2f} to {entropy['unscaled'][-1]:.3f}, "
        f"and the gradient softmax passes to the scores at d_k {WIDTHS[-1]} is "
        f"{ratio(jacobian['unscaled'][-1], jacobian['scaled'][-1])} the scaled one. Trained {steps} steps with one "
        f"head of width {HEAD_WIDTH}: entropy {numbers['model_entropy_init']['scaled']:.2f} -> {e['scaled']:.2f} "
        f"scaled, {numbers['model_entropy_init']['unscaled']:.2f} -> {e['unscaled']:.2f} unscaled; held-out loss "
        f"{val['scaled']:.3f} against {val['unscaled']:.3f}. {verdict(held)}.")
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers))


def figure(numbers: dict):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, title, ylabel in (
            (axes[0], "entropy", "attention entropy, random q and k", "entropy / log(keys) (1 = uniform)"),
            (axes[1], "jacobian", "gradient softmax passes to the scores", "||diag(p) - p p^T||_F, median query")):
        for label, formula in zip(VARIANTS, ("softmax(q.k / sqrt(d_k))", "softmax(q.k)")):
            ax.plot(WIDTHS, numbers[key][label], "o-", label=f"{label}: {formula}")
        ax.set(xscale="log", title=title, xlabel="d_k (head width)", ylabel=ylabel)
        ax.set_xticks(WIDTHS, [str(d) for d in WIDTHS])
        if key == "jacobian":
            ax.set_yscale("log")
        ax.legend()
    ax = axes[2]
    for label in VARIANTS:
        curve = numbers["curves"][label]
        ax.plot(curve["steps"], curve["losses"], label=f"{label}: attention entropy "
                f"{numbers['model_entropy_init'][label]:.2f} -> {numbers['model_entropy_trained'][label]:.2f}")
    ax.set(title=f"training loss, one head of width {HEAD_WIDTH}", xlabel="step", ylabel="loss per character")
    ax.legend()
    fig.tight_layout()
    return fig
