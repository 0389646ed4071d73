"""Decoding: greedy, sampling and beam search over any model that encodes once and then steps with a state."""
