"""Lab `mask`: the decoder's causal mask keeps it from looking at the future it is asked to predict (note 002).

Two character models of Tiny Shakespeare, the same in everything but `causal`, are trained for the same
steps on the same windows. Without the mask, position t can read token t + 1, the very token it is scored on,
so the training loss falls towards zero by copying. Generation cannot give it that token: the decoding
interface (start / step with a KV cache) feeds one character at a time, and each step's query sees only the
keys cached so far. So the held-out loss is measured that way, step by step, as the model would generate,
and the unmasked model meets a situation it never trained on. The leak itself is read off the attention
weights (viz.record_attention): the share of each query's weight on later keys, exactly 0 under the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import preset
from ..inference.generate import GenerationOptions, generate_ids
from ..models import build_model
from ..tasks.language_model import LanguageModelLoss, WindowBatch
from ..viz import attention_panel, record_attention
from .corpora import mean_loss, shakespeare
from .report import Finding, Options, ratio, verdict
from .training import train

CLAIM = "The decoder's causal mask keeps it from looking at the future it must predict (note 002)."
VARIANTS = {"masked": True, "unmasked": False}  # name -> ModelConfig.causal
COLORS = {"masked": "tab:blue", "unmasked": "tab:red"}
PROMPT = "ROMEO:\n"


def build(vocab_size: int, context: int, causal: bool, seed: int) -> nn.Module:
    """A small GPT-style character model with RoPE (offsets are what copying the next token needs)."""
    torch.manual_seed(seed)
    config = preset("gpt-tiny", vocab_size=vocab_size, d_model=64, n_heads=4, n_layers=2, d_ff=256,
                    max_len=context, positions="rope", dropout=0.0, attention_dropout=0.0, causal=causal)
    return build_model(config)


@torch.no_grad()
def stepwise_loss(model: nn.Module, batches: list[WindowBatch]) -> float:
    """Cross-entropy per character when each next character is predicted the way generation predicts it:
    one position at a time through start / step, every query seeing only the keys already cached."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        inputs, targets = batch.ids[:, :-1], batch.ids[:, 1:]  # (B, T) each
        state = model.start(inputs.shape[0], inputs.shape[1])
        logits = torch.stack([model.step(inputs[:, t:t + 1], state) for t in range(inputs.shape[1])], 1)  # (B, T, V)
        total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        count += targets.numel()
    return total / count


@torch.no_grad()
def attention(model: nn.Module, ids: Tensor) -> list[Tensor]:
    """The decoder's self-attention weights for a whole window read at once, (B, H, T, T) per layer."""
    model.eval()
    with record_attention(model) as layers:
        model(ids)
        return [m.weights for m in layers["decoder"]]


def future_weight(weights: list[Tensor]) -> list[list[float]]:
    """[layer][head]: the mean share of a query's attention on keys after it (the last query has none)."""
    T = weights[0].shape[-1]
    later = torch.ones(T, T, dtype=torch.bool).triu(1)  # (T, T): key j after query i
    return [(w * later).sum(-1)[..., :-1].mean((0, 2)).tolist() for w in weights]  # (B, H, T) -> (H,)


def sample(model: nn.Module, tokenizer, length: int, seed: int) -> str:
    """Text the model writes after PROMPT (sampled at temperature 0.8), one character per step with a cache."""
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    options = GenerationOptions(max_new_tokens=length - len(prompt), temperature=0.8, seed=seed)
    return PROMPT + tokenizer.decode(generate_ids(model, [prompt], options)[0])


def run(options: Options) -> Finding:
    quick, seed = options.quick, options.seed
    context, batch_size, steps, lr = (32, 8, 60, 1e-2) if quick else (64, 16, 500, 3e-3)
    corpus = shakespeare(context, batch_size, seed, val_batches=2 if quick else 6, chars=60_000 if quick else None)
    held_out = corpus.val_batches()
    training_windows = [corpus.train.batch(0, i) for i in range(len(held_out))]

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"val_loss": stepwise_loss(model, held_out), "val_window_loss": mean_loss(model, held_out)}

    numbers: dict = {key: {} for key in ("train_loss", "train_window_loss", "heldout_window_loss",
                                         "heldout_stepwise_loss", "future_weight", "sample", "curves")}
    attention_maps = {}
    for name, causal in VARIANTS.items():
        model = build(corpus.vocab_size, context, causal, seed)
        curve = train(model, corpus.train, LanguageModelLoss(), steps=steps, lr=lr, warmup=20, seed=seed,
                      evaluate=evaluate, eval_every=0 if quick else steps // 5, label=name)
        numbers["curves"][name] = curve.to_dict()
        numbers["train_loss"][name] = curve.final()
        numbers["train_window_loss"][name] = mean_loss(model, training_windows)  # eval mode, full windows
        numbers["heldout_window_loss"][name] = mean_loss(model, held_out)  # read at once: the future visible
        numbers["heldout_stepwise_loss"][name] = stepwise_loss(model, held_out)  # as it generates
        weights = attention(model, held_out[0].ids[:1, :-1])
        numbers["future_weight"][name] = future_weight(weights)
        attention_maps[name] = weights
        numbers["sample"][name] = sample(model, corpus.tokenizer, context, seed)

    loss, stepwise = numbers["train_window_loss"], numbers["heldout_stepwise_loss"]
    leak = {name: max(max(heads) for heads in numbers["future_weight"][name]) for name in VARIANTS}
    held = (loss["unmasked"] < loss["masked"] and stepwise["unmasked"] > stepwise["masked"]
            and leak["masked"] == 0.0 and leak["unmasked"] > 0.1)
    conclusion = (
        f"After {steps} steps on the same windows, the model without the causal mask scores "
        f"{loss['unmasked']:.2f} nats/char on training windows against {loss['masked']:.2f} with it "
        f"({ratio(loss['unmasked'], loss['masked'])}): one of its heads puts {100 * leak['unmasked']:.0f}% of "
        f"its attention on later characters, the masked model's exactly {100 * leak['masked']:.0f}%. Predicting "
        f"held-out text one character at a time, as it generates, the unmasked model scores "
        f"{stepwise['unmasked']:.2f} nats/char against the masked model's {stepwise['masked']:.2f} "
        f"(uniform guessing: {math.log(corpus.vocab_size):.2f}). {verdict(held)}.")
    settings = {"corpus": "tinyshakespeare" + (" (first 60,000 characters)" if quick else ""), "context": context,
                "batch_size": batch_size, "steps": steps, "lr": lr, "warmup": 20, "held_out_windows":
                len(held_out) * batch_size, "model": "gpt-tiny, d_model 64, 4 heads, 2 layers, RoPE, no dropout",
                "stepwise": "held-out loss via start/step with a KV cache, one character per step",
                "sample": f"prompt {PROMPT!r}, temperature 0.8, {context} characters"}
    tokens = [corpus.tokenizer.id_to_token(int(i)) for i in held_out[0].ids[0, :-1]]
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers, attention_maps, tokens))


def figure(numbers: dict, maps: dict[str, list[Tensor]], tokens: list[str]):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 10))
    ax = axes[0][0]
    for name, curve in numbers["curves"].items():
        color = COLORS[name]
        ax.plot(curve["steps"], curve["losses"], color=color, alpha=0.6, label=f"{name}: training (sees window)")
        points = curve["evaluations"]
        ax.plot([p["step"] for p in points], [p["val_loss"] for p in points], "o--", color=color,
                label=f"{name}: held-out, step by step")
    ax.set(title="loss per character", xlabel="step", ylabel="nats per character")
    ax.legend(fontsize=8, loc="center right")
    ax = axes[0][1]
    kinds = {"train_window_loss": "training windows\n(read at once)", "heldout_window_loss":
             "held-out windows\n(read at once)", "heldout_stepwise_loss": "held-out, step by step\n(as it generates)"}
    for offset, name in zip((-0.2, 0.2), VARIANTS):
        values = [numbers[k][name] for k in kinds]
        bars = ax.bar([i + offset for i in range(len(kinds))], values, 0.4, color=COLORS[name], label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(kinds)), list(kinds.values()), fontsize=8)
    ax.set(title="final loss, eval mode", ylabel="nats per character")
    ax.legend()
    ax = axes[0][2]
    for name in VARIANTS:
        shares = [100 * share for heads in numbers["future_weight"][name] for share in heads]
        ax.bar([f"L{layer}H{h}" for layer, heads in enumerate(numbers["future_weight"][name])
                for h in range(len(heads))], shares, alpha=0.7, color=COLORS[name],
               label=f"{name} (max {max(shares):.0f}%)")
    ax.set(title="attention on later characters (mean share per query)", xlabel="layer, head", ylabel="%")
    ax.legend()
    n = min(24, len(tokens))  # the first characters of one held-out window, readable
    shown = [{" ": "\u2423", "\n": "\\n"}.get(t, t) for t in tokens[:n]]
    for ax, name in zip(axes[1][:2], VARIANTS):
        shares = numbers["future_weight"][name]
        layer, head = max(((i, h) for i, heads in enumerate(shares) for h in range(len(heads))),
                          key=lambda lh: shares[lh[0]][lh[1]])
        attention_panel(ax, maps[name][layer][0, head, :n, :n], shown, shown,
                        f"{name}: layer {layer} head {head} (its most future-looking head)")
        ax.set(xlabel="key (attended to)", ylabel="query")
    ax = axes[1][2]
    ax.axis("off")
    text = "\n\n".join(f"{name} model writes:\n{numbers['sample'][name]}" for name in VARIANTS)
    ax.text(0, 1, text, va="top", family="monospace", fontsize=8, wrap=True)
    ax.set_title("generated one character at a time (KV cache)")
    fig.tight_layout()
    return fig
