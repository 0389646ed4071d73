import math

import torch

from transformerkit import ModelConfig
from transformerkit.nn import Embeddings, TokenEmbedding
from transformerkit.nn.embedding import sinusoids


def test_token_embedding_scaled_by_sqrt_d_model():
    plain, scaled = TokenEmbedding(10, 16), TokenEmbedding(10, 16, scale=True)
    scaled.weight = plain.weight
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(scaled(ids), plain(ids) * math.sqrt(16))


def test_sinusoids_are_the_paper_formula_with_sin_and_cos_halves():
    table = sinusoids(50, 16)
    pos, i = 13, 3
    angle = pos / 10000 ** (2 * i / 16)
    assert abs(table[pos, i] - math.sin(angle)) < 1e-6
    assert abs(table[pos, 8 + i] - math.cos(angle)) < 1e-6


def test_sinusoids_match_marian():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    torch.testing.assert_close(sinusoids(40, 16), MarianSinusoidalPositionalEmbedding(40, 16).create_weight())


def test_embeddings_add_positions_and_token_types():
    config = ModelConfig(family="encoder", d_model=16, n_heads=2, d_ff=32, vocab_size=20, positions="learned",
                         type_vocab_size=2, dropout=0.0)
    embed = Embeddings(config, TokenEmbedding(20, 16))
    ids, positions, types = torch.tensor([[4, 5]]), torch.tensor([[0, 1]]), torch.tensor([[0, 1]])
    expected = embed.tokens(ids) + embed.positions(positions) + embed.token_types(types)
    torch.testing.assert_close(embed(ids, positions, types), expected)
    # no token types given means type 0, as in BERT
    torch.testing.assert_close(embed(ids, positions), embed.tokens(ids) + embed.positions(positions)
                               + embed.token_types.weight[0])
