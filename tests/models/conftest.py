import pytest

from transformerkit import preset

# tiny configs of every kind the core supports, dropout off so outputs are deterministic
FAMILIES = {
    "gpt2": preset("gpt-tiny", vocab_size=60, dropout=0.0, attention_dropout=0.0),
    "llama": preset("llama-tiny", vocab_size=60, rope_theta=500.0),
    "transformer-2017": preset("transformer-tiny", vocab_size=60, dropout=0.0),
    "pre-norm-seq2seq": preset("transformer-tiny", vocab_size=60, dropout=0.0, norm_position="pre",
                               share_embeddings=False, target_vocab_size=50, tie_embeddings=True),
    "bart": preset("bart-base", vocab_size=60, d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0),
    "bert": preset("bert-tiny", vocab_size=60, dropout=0.0, attention_dropout=0.0, n_classes=3),
}
DECODERS = [name for name, c in FAMILIES.items() if c.family != "encoder"]


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param
