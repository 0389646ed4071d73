"""Evaluation: BLEU, chrF, tokenized BLEU, perplexity and accuracy."""
