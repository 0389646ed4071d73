"""The recurrent-versus-Transformer experiment, end to end on a small slice of Multi30k."""

import json

from transformerkit.cli import main


def test_experiment_writes_every_file_and_resumes(data_env, tmp_path, capsys):
    out = tmp_path / "experiment"
    small = ["--set", "data.batch_tokens=4000", "--set", "data.val_sentences=8",
             "--set", "decoding.max_len_a=0.5", "--set", "decoding.max_len_b=4",  # untrained models never end alone
             "--set", "model.n_layers=1", "--set", "data.max_sentence_tokens=12"]  # the shortest pairs: seconds a model
    assert main(["experiment", "multi30k", "--direction", "de-en", "--epochs", "1", "--out", str(out),
                 "--device", "cpu", *small]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results] == ["lstm", "gru", "gru_attention", "lstm_attention", "transformer"]
    for r in results:
        assert {"parameters", "train_seconds", "bleu_tokenized_greedy", "bleu_tokenized_beam",
                "sacrebleu_beam"} <= set(r)
    for name in ("results.md", "bleu_vs_time.png", "attention.png"):
        assert (out / name).stat().st_size > 0
    assert max((out / name).stat().st_size for name in ("bleu_vs_time.png", "attention.png")) < 1_000_000
    before = (out / "lstm" / "metrics.jsonl").read_text()
    assert main(["experiment", "multi30k", "--epochs", "1", "--out", str(out), "--device", "cpu", *small,
                 "--models", "lstm,transformer"]) == 0  # finished models are kept, not retrained
    assert (out / "lstm" / "metrics.jsonl").read_text() == before
