import random

import torch

from transformerkit.data.batching import bucket_by_tokens, pad, seq2seq_batch, shuffled_groups


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


def test_fixed_size_batches_by_length_pad_little_and_still_change_from_epoch_to_epoch():
    """In-batch negatives need full batches; sorted by length, they are mostly real tokens; the batches, their
    order and which items share a batch are a function of (seed, epoch)."""
    lengths = [random.Random(i).randint(2, 40) for i in range(1000)]
    batches = shuffled_groups(1000, 64, seed=1, epoch=0, lengths=lengths)
    assert len(batches) == 15 and all(len(b) == 64 for b in batches)
    assert len({i for b in batches for i in b}) == 15 * 64  # each item at most once, 40 left out
    left_out = set(range(1000)) - {i for b in batches for i in b}
    assert min(lengths[i] for i in left_out) < 20  # at random, not the 40 longest
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    assert padded < 1.1 * real
    random_batches = shuffled_groups(1000, 64, seed=1, epoch=0)
    assert sum(max(lengths[i] for i in b) * len(b) for b in random_batches) > 1.5 * padded
    assert batches == shuffled_groups(1000, 64, 1, 0, lengths)
    assert {frozenset(b) for b in batches} != {frozenset(b) for b in shuffled_groups(1000, 64, 1, 1, lengths)}
    assert [min(lengths[i] for i in b) for b in batches] != sorted(min(lengths[i] for i in b) for b in batches)


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
