import random

import torch

from transformerkit.data.batching import bucket_by_tokens, pad, seq2seq_batch


def test_batches_respect_the_token_budget_and_cover_every_item_once():
    lengths = [random.Random(i).randint(2, 40) for i in range(500)]
    batches = bucket_by_tokens(lengths, max_tokens=300, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(max(lengths[i] for i in b) * len(b) <= 300 for b in batches)
    assert max(len(b) for b in batches) > 3 * min(len(b) for b in batches)  # short sentences come many to a batch


def test_batches_depend_only_on_seed_and_epoch():
    lengths = [random.Random(i).randint(2, 40) for i in range(200)]
    assert bucket_by_tokens(lengths, 200, 1, 3) == bucket_by_tokens(lengths, 200, 1, 3)
    assert bucket_by_tokens(lengths, 200, 1, 3) != bucket_by_tokens(lengths, 200, 1, 4)
    assert bucket_by_tokens(lengths, 200, 1, 3) != bucket_by_tokens(lengths, 200, 2, 3)


def test_length_bucketing_keeps_padding_small():
    lengths = [random.Random(i).randint(2, 40) for i in range(1000)]
    batches = bucket_by_tokens(lengths, 400, 1, 0)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.1 * sum(lengths)


def test_a_seq2seq_batch_shifts_the_target_and_builds_masks_once():
    batch = seq2seq_batch([[5, 6, 7], [8]], [[9], [10, 11]], [0, 1], pad_id=0, bos_id=1, eos_id=2)
    assert batch.source.tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    assert batch.target_in.tolist() == [[1, 9, 0], [1, 10, 11]]
    assert batch.target_out.tolist() == [[9, 2, 0], [10, 11, 2]]
    assert batch.source_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.n_tokens == 6 + 5 and batch.n_target_tokens == 5


def test_pad_mask_is_true_at_real_tokens_even_when_a_token_equals_pad():
    ids, mask = pad([[0, 4], [4]], pad_id=0)
    assert ids.tolist() == [[0, 4], [4, 0]] and mask.tolist() == [[True, True], [True, False]]
    assert mask.dtype == torch.bool
