"""Lab `length`: BLEU against source sentence length, the figure of Bahdanau et al. (2015) (note 003).

Note 003: a recurrent encoder squeezes the whole sentence into one vector whatever its length, so long
sentences lose information. Attention (Bahdanau et al.) and the Transformer read every source state instead.
Three translators - a GRU encoder-decoder without attention (Cho et al., 2014), the same GRU with additive
attention, and the Transformer - translate Multi30k test_2016_flickr greedily (inference/translate.py), and
the test sentences are grouped by source length in words; each group is scored with the project's corpus
BLEU (evaluation/metrics.py). The number the verdict uses: how much of its short-sentence BLEU each model
loses on the longest sentences. The models are read from `transformerkit experiment multi30k`'s folder
(`--model DIR`, else runs/experiment-de-en when it exists), else trained here briefly, for the same steps on
the same batches of a Multi30k subset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RNNConfig, preset
from ..data.datasets import multi30k
from ..data.tokenizers import special_ids
from ..errors import ConfigError
from ..evaluation.metrics import sacrebleu_score
from ..inference.translate import translate
from ..models import RNNSeq2Seq, build_model
from ..tasks.translation import TranslationLoss
from .corpora import Translation, multi30k_de_en
from .report import Finding, Options, verdict
from .training import train

READS_MODEL = True  # --model DIR: score the experiment's trained runs
CLAIM = ("Recurrent models without attention squeeze the source into one vector and lose long-range "
         "information, so their BLEU falls with sentence length more than attention models' do (note 003; "
         "Bahdanau et al., 2015).")
MODELS = ("rnn", "rnn+attention", "transformer")
EXPERIMENT_NAMES = {"rnn": ("gru", "lstm"), "rnn+attention": ("gru_attention", "lstm_attention"),
                    "transformer": ("transformer",)}  # experiment.MODELS' run folders, first found wins
EDGES = (9, 12, 15, 19)  # bucket upper bounds in source words: <=9, 10-12, 13-15, 16-19, >=20 (35+ test sentences each)


def bucket_names() -> list[str]:
    bounds = [0, *EDGES]
    return [f"{a + 1}-{b}" if a else f"<={b}" for a, b in zip(bounds, bounds[1:])] + [f">={EDGES[-1] + 1}"]


def bucket(words: int) -> int:
    return sum(words > edge for edge in EDGES)


def build(kind: str, vocab_size: int, ids: dict[str, int], seed: int) -> torch.nn.Module:
    """Small versions of the experiment's three (recipes multi30k-de-en-gru*, -demo), the same seed each."""
    torch.manual_seed(seed)
    if kind == "transformer":
        return build_model(preset("transformer-tiny", vocab_size=vocab_size, d_model=128, d_ff=256, n_layers=2,
                                  n_heads=4, dropout=0.0, norm_position="pre", max_len=256, **ids))
    return RNNSeq2Seq(RNNConfig(cell="gru", attention=kind == "rnn+attention", vocab_size=vocab_size,
                                embedding_dim=128, hidden_size=128, n_layers=1, dropout=0.0, share_embeddings=True,
                                **ids))


def trained_here(quick: bool, seed: int) -> tuple[dict, dict, list[str], list[str]]:
    """Train the three on the first `pairs` training pairs for equal steps; returns them, their settings and
    the test sentences."""
    pairs, steps = (1000, 5) if quick else (8000, 220)
    corpus: Translation = multi30k_de_en(pairs, vocab_size=1000 if quick else 2000, batch_tokens=1024, seed=seed,
                                         val_sentences=1, test_sentences=100 if quick else None)
    ids, vocab = special_ids(corpus.tokenizer), corpus.tokenizer.get_vocab_size()
    models, seconds = {}, {}
    for kind in MODELS:
        model = corpus.attach(build(kind, vocab, ids, seed))
        curve = train(model, corpus.data, TranslationLoss(0.1), steps=steps, lr=3e-3, warmup=min(50, steps // 4),
                      seed=seed, label=kind)
        models[kind], seconds[kind] = model, round(curve.seconds, 1)
    settings = {"source": f"trained here: the first {pairs} Multi30k de-en training pairs, BPE {vocab}",
                "steps": steps, "batch_tokens": 1024, "lr": 3e-3, "label_smoothing": 0.1, "train_seconds": seconds,
                "models": {"rnn": "GRU, no attention, embeddings 128, hidden 128",
                           "rnn+attention": "GRU + additive attention, bidirectional encoder, hidden 128",
                           "transformer": "transformer-tiny, d_model 128, 2+2 layers, pre-norm"}}
    return models, settings, corpus.test.sources, corpus.test.targets


def from_experiment(folder: Path) -> tuple[dict, dict, list[str], list[str]]:
    """The trained runs of `transformerkit experiment multi30k` (one run folder per model)."""
    from ..loading import load

    models, used = {}, {}
    for kind, names in EXPERIMENT_NAMES.items():
        run = next((folder / n for n in names if (folder / n).is_dir()), None)
        if run is None:
            raise ConfigError(f"--model: {folder} has none of {', '.join(names)}; give the folder that "
                              "`transformerkit experiment multi30k` wrote (e.g. runs/experiment-de-en)")
        models[kind], used[kind] = load(run, device="cpu"), str(run)
    test = multi30k("test_2016_flickr", "de", "en")
    return models, {"source": f"trained runs from {folder}", "runs": used}, test.sources, test.targets


EXPERIMENT = Path("runs/experiment-de-en")  # where `transformerkit experiment multi30k` writes by default


def run(options: Options) -> Finding:
    experiment = options.model or (EXPERIMENT if not options.quick and EXPERIMENT.is_dir() else None)
    if experiment:
        models, settings, sources, references = from_experiment(Path(experiment))
    else:
        models, settings, sources, references = trained_here(options.quick, options.seed)
    names = bucket_names()
    groups = [[i for i, s in enumerate(sources) if bucket(len(s.split())) == b] for b in range(len(names))]
    numbers: dict = {"buckets": names, "sentences": [len(g) for g in groups], "bleu": {}, "bleu_by_length": {},
                     "drop": {}, "slope": {}}
    words = [sum(len(sources[i].split()) for i in g) / max(1, len(g)) for g in groups]  # mean length per bucket
    for kind, model in models.items():
        hypotheses = translate(model, sources, beam=1)
        numbers["bleu"][kind] = sacrebleu_score(hypotheses, references)["sacrebleu"]
        by_length = [sacrebleu_score([hypotheses[i] for i in g], [references[i] for i in g])["sacrebleu"]
                     if g else 0.0 for g in groups]
        numbers["bleu_by_length"][kind] = by_length
        short, long = by_length[0], by_length[-1]
        numbers["drop"][kind] = 1 - long / short if short > 0 else 0.0  # share of short-sentence BLEU lost
        numbers["slope"][kind] = _slope(words, by_length)

    drop = numbers["drop"]
    held = all(drop["rnn"] > drop[k] for k in MODELS[1:]) and numbers["bleu"]["rnn"] > 0
    short = "short trainings here, so the BLEU values are small; " if not experiment else ""
    row = lambda k: "/".join(f"{v:.1f}" for v in numbers["bleu_by_length"][k])  # noqa: E731
    conclusion = (
        f"BLEU on test_2016_flickr by source length ({', '.join(names)} words; {short}"
        f"{settings['source']}): RNN {row('rnn')}, RNN with attention {row('rnn+attention')}, Transformer "
        f"{row('transformer')}. On the longest sentences the RNN without attention kept {100 * (1 - drop['rnn']):.0f}% "
        f"of its shortest-sentence BLEU, the RNN with attention {100 * (1 - drop['rnn+attention']):.0f}% and the "
        f"Transformer {100 * (1 - drop['transformer']):.0f}% (slopes {numbers['slope']['rnn']:.2f}, "
        f"{numbers['slope']['rnn+attention']:.2f} and {numbers['slope']['transformer']:.2f} BLEU per source word). "
        f"{verdict(held)}.")
    settings.update({"test": "test_2016_flickr", "sentences": len(sources), "decoding": "greedy",
                     "bleu": "sacreBLEU (evaluation/metrics.py), corpus BLEU within each bucket",
                     "length": "source words (whitespace)", "bucket_edges": EDGES})
    notes = ["A model that has learned little scores low at every length and has little to lose on long sentences: "
             "compare the drops only between models whose short-sentence BLEU is comparable."]
    return Finding(CLAIM, held, conclusion, numbers, settings, figure(numbers, words), notes)


def _slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y on x: BLEU points gained (negative: lost) per extra source word."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / max(sum((a - mx) ** 2 for a in x), 1e-9)


def figure(numbers: dict, words: list[float]):
    from ..viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = {"rnn": "RNN, no attention", "rnn+attention": "RNN + attention (Bahdanau)",
              "transformer": "Transformer"}
    for kind, values in numbers["bleu_by_length"].items():
        axes[0].plot(words, values, "o-", label=f"{labels[kind]} (all: {numbers['bleu'][kind]:.1f})")
        short = values[0] or 1.0
        axes[1].plot(words, [100 * v / short for v in values], "o-", label=labels[kind])
    ticks = [f"{n}\n({c})" for n, c in zip(numbers["buckets"], numbers["sentences"])]
    axes[0].set(title="BLEU by source sentence length", xlabel="source words (sentences)", ylabel="sacreBLEU")
    axes[1].set(title="relative to each model's shortest-sentence BLEU", xlabel="source words (sentences)",
                ylabel="% of shortest-bucket BLEU")
    for ax in axes:
        ax.set_xticks(words, ticks)
        ax.legend()
    fig.tight_layout()
    return fig
