"""Lab `teacher-forcing`: feeding the decoder the true previous token while training (note 003).

Note 003's seq2seq (an LSTM encoder-decoder, Sutskever et al., 2014) trains by feeding each decoder step its
own previous guess (`x = output.argmax(1)`): a ratio of 0. Teacher forcing (Williams and Zipser, 1989) feeds
the true previous token instead (ratio 1); scheduled sampling (Bengio et al., 2015) mixes the two (0.5).
Three copies of the note's model (an LSTM without attention, the final state all the decoder gets) differ
only in RNNConfig.teacher_forcing and learn to copy random sequences, a task whose every answer is known,
for the same steps on the same batches from the same seed. Every variant is measured the same way on
held-out sequences: the teacher-forced loss, and greedy decoding (which always feeds the model's own
guesses, where a model trained only on true tokens meets its own mistakes for the first time: exposure bias).
"""

from __future__ import annotations

import statistics

import torch

from ..config import RNNConfig
from ..data.batching import seq2seq_batch
from ..models import RNNSeq2Seq
from ..tasks.translation import TranslationLoss
from .report import Finding, Options, verdict
from .synthetic import BOS, EOS, PAD, SequenceData, SequenceTask, accuracy, held_out
from .training import train

CLAIM = ("Teacher forcing (feeding the true previous token, not the model's own guess, while training) makes "
         "seq2seq training faster and steadier; note 003's seq2seq feeds back its own argmax instead (note 003).")
RATIOS = (0.0, 0.5, 1.0)
LEVEL = 0.5  # held-out loss per token (nats) a run must get below: "learned most of the task"


def build(teacher_forcing: float, vocab_size: int, seed: int) -> RNNSeq2Seq:
    """Note 003's model, small: a one-layer LSTM encoder-decoder without attention; the same seed, so every
    variant starts from the same weights."""
    torch.manual_seed(seed)
    return RNNSeq2Seq(RNNConfig(cell="lstm", attention=False, vocab_size=vocab_size, embedding_dim=32,
                                hidden_size=64, n_layers=1, dropout=0.0, teacher_forcing=teacher_forcing,
                                share_embeddings=True))


def evaluator(sources: list[list[int]], targets: list[list[int]]):
    """Held-out loss per token with true previous tokens (eval mode always teacher-forces), and greedy accuracy."""
    batch = seq2seq_batch(sources, targets, list(range(len(sources))), PAD, BOS, EOS)
    loss = TranslationLoss(0.0)

    def evaluate(model) -> dict[str, float]:
        value, tokens = loss(model, batch)
        return {"val_loss": float(value) / tokens, "val_exact": accuracy(model, sources, targets)["exact"]}

    return evaluate


def roughness(losses: list[float]) -> float:
    """How jumpy a training curve is, whatever its level: the median of |change from one step to the next| /
    loss, over the second half of training (the first half is dominated by the descent itself)."""
    tail = losses[len(losses) // 2:]
    return statistics.median(abs(b - a) / a for a, b in zip(tail, tail[1:])) if len(tail) > 1 else 0.0


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    task = SequenceTask("copy", symbols=10, lengths=(4, 8))
    steps, every = (40, 20) if quick else (800, 40)
    data = SequenceData(task, batch_size=32 if quick else 64, batches_per_epoch=100, seed=seed)
    sources, targets = held_out(task, 50 if quick else 200, seed)
    evaluate = evaluator(sources, targets)

    numbers: dict = {"curves": {}, "val_loss": {}, "exact": {}, "steps_to_level": {}, "roughness": {},
                     "seconds": {}}
    for r in RATIOS:
        model = build(r, task.vocab_size, seed)
        curve = train(model, data, TranslationLoss(0.0), steps=steps, lr=3e-3, seed=seed, evaluate=evaluate,
                      eval_every=every, label=f"teacher_forcing={r}")
        key = str(r)
        numbers["curves"][key] = curve.to_dict()
        last = curve.evaluations[-1]
        numbers["val_loss"][key], numbers["exact"][key] = last["val_loss"], last["val_exact"]
        numbers["steps_to_level"][key] = next((e["step"] for e in curve.evaluations if e["val_loss"] < LEVEL), None)
        numbers["roughness"][key] = roughness(curve.losses)
        numbers["seconds"][key] = round(curve.seconds, 2)

    forced, free = numbers["steps_to_level"]["1.0"], numbers["steps_to_level"]["0.0"]
    faster = forced is not None and (free is None or forced < free)
    steadier = numbers["roughness"]["1.0"] < numbers["roughness"]["0.0"]
    held = faster and steadier
    reached = lambda r: (f"at step {numbers['steps_to_level'][r]}" if numbers["steps_to_level"][r]  # noqa: E731
                         else f"not within {steps} steps")
    rough = numbers["roughness"]
    conclusion = (
        f"Copying random sequences of 4-8 symbols with note 003's LSTM encoder-decoder, {steps} steps each: the "
        f"held-out loss fell below {LEVEL} {reached('1.0')} with teacher forcing (ratio 1), ratio 0.5 "
        f"{reached('0.5')}, and ratio 0 (feeding back its own guesses, as the note's code does) {reached('0.0')}: "
        f"{'faster' if faster else 'not faster'} with teacher forcing. Final held-out loss "
        f"{numbers['val_loss']['1.0']:.3f} / {numbers['val_loss']['0.5']:.3f} / {numbers['val_loss']['0.0']:.3f} "
        f"and greedy exact copies {100 * numbers['exact']['1.0']:.0f}% / {100 * numbers['exact']['0.5']:.0f}% / "
        f"{100 * numbers['exact']['0.0']:.0f}% (ratios 1 / 0.5 / 0). Late in training the loss moved "
        f"{100 * rough['1.0']:.0f}% of itself per step with teacher forcing against {100 * rough['0.0']:.0f}% "
        f"without: {'steadier' if steadier else 'not steadier'}. {verdict(held)}.")
    settings = {"task": "copy", "symbols": task.symbols, "lengths": task.lengths, "steps": steps,
                "batch_size": data.batch_size, "lr": 3e-3, "eval_every": every, "loss_level": LEVEL,
                "held_out_sequences": len(sources), "label_smoothing": 0.0,
                "model": "RNNSeq2Seq: LSTM, no attention, 1 layer, embeddings 32, hidden 64, no dropout",
                "teacher_forcing_draw": "one draw per decoder step for the whole batch (models/rnn.py)"}
    notes = ["The training loss of ratios below 1 is measured on the model's own inputs, so it is not the same "
             "quantity as ratio 1's; the held-out numbers are measured identically for all three.",
             "Equal steps, not equal time: a step feeding back guesses runs the decoder one token at a time "
             f"(seconds: {numbers['seconds']})."]
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers), notes)


def figure(numbers: dict):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = {"0.0": "tab:red", "0.5": "tab:orange", "1.0": "tab:blue"}
    for key, curve in numbers["curves"].items():
        label = f"teacher forcing {key}"
        axes[0].plot(curve["steps"], curve["losses"], color=colors[key], label=label, linewidth=0.8)
        steps = [e["step"] for e in curve["evaluations"]]
        axes[1].plot(steps, [e["val_loss"] for e in curve["evaluations"]], "o-", color=colors[key], label=label,
                     markersize=3)
        axes[2].plot(steps, [100 * e["val_exact"] for e in curve["evaluations"]], "o-", color=colors[key],
                     label=label, markersize=3)
    axes[0].set(title="training loss (on the inputs each variant was fed)", xlabel="step", ylabel="loss per token")
    axes[1].axhline(LEVEL, color="gray", linestyle=":", label=f"level {LEVEL}")
    axes[1].set(title="held-out loss (true previous tokens)", xlabel="step", ylabel="loss per token")
    axes[2].set(title="held-out greedy decoding (own guesses fed)", xlabel="step", ylabel="% sequences exactly right",
                ylim=(0, 100))
    for ax in axes:
        ax.legend()
    fig.suptitle("Copying random sequences with an LSTM encoder-decoder, by teacher-forcing ratio")
    fig.tight_layout()
    return fig
