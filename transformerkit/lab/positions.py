"""Lab `positions`: attention sees a set, not a sequence, until positions are added (notes 002 and 004).

First, exactly: an encoder without positional encoding gives, for a shuffled input, its output for the
unshuffled input shuffled the same way (attention is a weighted sum over keys, whatever their order). With
sinusoidal, learned or rotary positions it does not. Then, trained: encoder-decoders that differ only in
`positions` learn to reverse random sequences, a task whose answer depends on order alone, for the same
steps on the same batches; they are scored on the lengths they trained on and on longer ones, where RoPE,
which encodes only the offset between tokens, has a chance that absolute positions do not.
"""

from __future__ import annotations

import torch

from ..config import preset
from ..models import build_model
from ..tasks.translation import TranslationLoss
from .report import Finding, Options, verdict
from .synthetic import SequenceData, SequenceTask, accuracy, held_out
from .training import train

CLAIM = ("Self-attention has no notion of order; positional encodings (sinusoidal, learned, or RoPE, which encodes "
         "relative position) give it one (notes 002, 004).")
VARIANTS = ("none", "learned", "sinusoidal", "rope")


def build(positions: str, vocab_size: int, seed: int, max_len: int):
    """The same small 2017-style encoder-decoder (scaled embeddings, so positions do not drown the tokens) with
    one kind of positions; the same seed, so the variants start as alike as their parameters allow."""
    torch.manual_seed(seed)
    config = preset("transformer-tiny", vocab_size=vocab_size, d_model=64, n_heads=4, d_ff=128, n_layers=2,
                    max_len=max_len, positions=positions, dropout=0.0, norm_position="pre")
    return build_model(config).eval()


@torch.no_grad()
def permutation_error(model, vocab_size: int, seed: int, length: int = 12) -> float:
    """max |encode(shuffled x) - shuffled encode(x)|: 0 up to float rounding when the encoder ignores order."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (1, length), generator=generator)  # (1, S)
    order = torch.randperm(length, generator=generator)
    memory = model.encode(ids)  # (1, S, C)
    return float((model.encode(ids[:, order]) - memory[:, order]).abs().max())


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    trained, longer = ((4, 8), (9, 12)) if quick else ((4, 16), (17, 24))  # quick: shorter, fewer to decode
    task = SequenceTask("reverse", symbols=16, lengths=trained)
    steps = 15 if quick else 300
    data = SequenceData(task, batch_size=16 if quick else 64, batches_per_epoch=100, seed=seed)
    sources, targets = held_out(task, 50 if quick else 400, seed, (trained[0], longer[1]))

    numbers: dict = {"permutation_error": {}, "exact": {}, "tokens": {}, "exact_longer": {}, "tokens_longer": {},
                     "tokens_by_length": {}, "curves": {}}
    for positions in VARIANTS:
        model = build(positions, task.vocab_size, seed, max_len=2 * longer[1])
        numbers["permutation_error"][positions] = permutation_error(model, task.vocab_size, seed)
        curve = train(model, data, TranslationLoss(0.0), steps=steps, lr=2e-3, warmup=20, seed=seed,
                      label=f"positions={positions}")
        numbers["curves"][positions] = curve.to_dict()
        by_length = {}
        for length in range(trained[0], longer[1] + 1):
            rows = [i for i, s in enumerate(sources) if len(s) == length]
            if rows:
                by_length[length] = accuracy(model, [sources[i] for i in rows], [targets[i] for i in rows])
        numbers["tokens_by_length"][positions] = {k: v["tokens"] for k, v in by_length.items()}
        for suffix, (low, high) in (("", trained), ("_longer", longer)):
            chosen = [v for k, v in by_length.items() if low <= k <= high]
            for key in ("exact", "tokens"):
                numbers[key + suffix][positions] = sum(v[key] for v in chosen) / max(1, len(chosen))

    blind = numbers["permutation_error"]["none"] < 1e-4
    sighted = all(numbers["permutation_error"][p] > 1e-2 for p in VARIANTS[1:])
    learned = all(numbers["exact"][p] > numbers["exact"]["none"] for p in VARIANTS[1:])
    held = blind and sighted and learned
    best_longer = max(VARIANTS, key=lambda p: numbers["tokens_longer"][p])
    percent = lambda key: ", ".join(f"{p} {100 * numbers[key][p]:.0f}%" for p in VARIANTS)  # noqa: E731
    conclusion = (
        f"Without positions the encoder's output for a shuffled input equals its output shuffled, to "
        f"{numbers['permutation_error']['none']:.1e} (with sinusoidal positions they differ by "
        f"{numbers['permutation_error']['sinusoidal']:.2f}). Reversing sequences of {trained[0]}-{trained[1]} "
        f"symbols after {steps} steps, exactly right: {percent('exact')}; on longer sequences "
        f"({longer[0]}-{longer[1]}) tokens right: {percent('tokens_longer')}, best {best_longer}. {verdict(held)}.")
    settings = {"task": "reverse", "symbols": task.symbols, "trained_lengths": trained, "longer_lengths": longer,
                "steps": steps, "batch_size": data.batch_size, "lr": 2e-3, "warmup": 20,
                "model": "transformer-tiny, d_model 64, 4 heads, 2+2 layers, pre-norm, no dropout",
                "held_out_sequences": len(sources)}
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers, trained, longer))


def figure(numbers: dict, trained: tuple[int, int], longer: tuple[int, int]):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    errors = [max(numbers["permutation_error"][p], 1e-9) for p in VARIANTS]
    ax.bar(VARIANTS, errors, color=["tab:gray", "tab:blue", "tab:orange", "tab:green"])
    ax.set(yscale="log", title="encode(shuffled x) vs shuffled encode(x)\n(max abs difference, at initialisation)")
    ax = axes[1]
    for p in VARIANTS:
        curve = numbers["curves"][p]
        ax.plot(curve["steps"], curve["losses"], label=p)
    ax.set(title="training loss, reversing sequences", xlabel="step", ylabel="loss per token")
    ax.legend()
    ax = axes[2]
    for p in VARIANTS:
        by_length = numbers["tokens_by_length"][p]
        ax.plot(list(by_length), [100 * v for v in by_length.values()], "o-", label=p, markersize=3)
    ax.axvspan(longer[0] - 0.5, longer[1] + 0.5, color="gray", alpha=0.15, label="longer than trained")
    ax.set(title="held-out tokens right, by length", xlabel="sequence length", ylabel="%", ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    return fig
