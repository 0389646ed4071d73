"""Label-smoothed cross-entropy, fused with the output layer.

The full logits of a batch (tokens x vocabulary) are the largest tensor in training: 4,000 tokens over
8,000 words is 128 MB in float32, written and read several times. So the output layer and the loss run
together a chunk of rows at a time (8 MB of logits: larger chunks mean fewer, faster matmuls, measured on a
2-core Xeon), and the gradient is worked out in the same pass: d loss / d logits = softmax - smoothed
target, known as soon as the softmax is. Only the gradients of the hidden states and of the weights are
kept for the backward pass.

The smoothed target, (1 - eps) on the right token plus eps / V everywhere, never becomes a tensor: its
products with the weights are a gathered row and a column sum, so each chunk costs three matmuls and a
few passes over its logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.linear import add_linear, linear

CHUNK_ELEMENTS = 1 << 21  # logits per chunk: 8 MB in float32 (262 rows of an 8,000-word vocabulary, raised to MIN_ROWS)
# Every chunk also reads and writes the whole weight gradient (V x C: 154 MB for GPT-2's 50,257 x 768), so a
# chunk needs enough rows for its matmuls to outweigh that: with 8 MB chunks GPT-2 would get 41 rows and
# spend as long moving the gradient as multiplying.
MIN_ROWS = 512


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, smoothing: float,
                compute_dtype: torch.dtype) -> Tensor:
        N, V = hidden.shape[0], weight.shape[0]
        eps = smoothing
        exact = torch.promote_types(compute_dtype, torch.float32)  # softmax and sums: float32 (float64 in tests)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        w = weight.to(compute_dtype)  # (V, C)
        total = torch.zeros((), dtype=exact, device=hidden.device)
        if need_grad:
            grad_hidden = torch.empty(hidden.shape, dtype=exact, device=hidden.device)
            grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device)
            weight_sum = w.to(exact).sum(dim=0)  # (C,): the uniform part of the target times the weights
            hidden_sum = torch.zeros(hidden.shape[1], dtype=exact, device=hidden.device)  # (C,): and the inputs
            grad_bias = torch.zeros(V, dtype=exact, device=weight.device) if bias is not None else None
            if compute_dtype != exact:  # (V, C) chunk products, one buffer for all chunks
                product = torch.empty(weight.shape, dtype=compute_dtype, device=weight.device)
        rows = max(MIN_ROWS, CHUNK_ELEMENTS // V)
        for start in range(0, N, rows):
            h = hidden[start:start + rows].to(compute_dtype)  # (n, C)
            y = target[start:start + rows]  # (n,)
            logits = linear(h, w)  # (n, V), in the compute dtype
            if bias is not None:
                logits = logits.to(exact) + bias.to(exact)
            # One softmax kernel (each row's max, exponentials and sum, row by row in cache) rather than six passes
            # over the chunk's logits; the log-sum-exp comes back from the right token's probability: lse =
            # logit - log p. A probability that underflowed (the right token 87 or more below the row's best in
            # float32) has no usable log: those rows' lse are computed outright. The Trainer's step took 1-2%
            # less time for it (multi30k-de-en both dtypes, gpt2-small bfloat16 2.4%; steps alternating in one
            # process, AMD EPYC family 25 model 17).
            probs = torch.softmax(logits, dim=-1, dtype=exact)  # (n, V)
            picked = logits.gather(1, y[:, None]).squeeze(1).to(exact)  # (n,)
            picked_prob = probs.gather(1, y[:, None]).squeeze(1)
            lse = picked - picked_prob.log()
            lost = picked_prob < torch.finfo(exact).tiny
            if lost.any():
                lse[lost] = logits[lost].to(exact).logsumexp(dim=-1)
            mean = logits.mean(dim=-1, dtype=exact)
            total += ((1 - eps) * (lse - picked) + eps * (lse - mean)).sum()
            if not need_grad:
                continue
            g = probs.to(compute_dtype)  # softmax (n, V)
            # d loss / d logits = softmax - eps / V - (1 - eps) one_hot(y), multiplied out term by term
            grad_hidden[start:start + rows] = (linear(g, w.t()).to(exact) - (eps / V) * weight_sum
                                               - (1 - eps) * w[y].to(exact))
            h_exact = h.to(exact)
            if g.dtype == exact:
                # one pass over the (V, C) sum: in place through MKL; through oneDNN a new sum each chunk, and a
                # contiguous copy of g^T (n, V)
                grad_weight = add_linear(grad_weight, g.t(), h.t())
            else:
                # added to the float32 sum as it is read, not cast into a new tensor: two new (V, C) tensors a
                # chunk were page-faulted in each time (gpt2-small bfloat16, 8 chunks: the step 5.7 -> 5.3 s; page
                # faults 220-320k in every step before, none in most steps after; AMD EPYC avx512bf16)
                grad_weight += torch.mm(g.t(), h, out=product)
            hidden_sum += h_exact.sum(dim=0)
            grad_weight.index_add_(0, y, h_exact, alpha=-(1 - eps))
            if grad_bias is not None:
                grad_bias += g.to(exact).sum(dim=0) - (eps / V) * y.shape[0]
                grad_bias.index_add_(0, y, torch.full(y.shape, -(1 - eps), dtype=exact, device=y.device))
        if need_grad:
            if eps:  # the uniform part's share of the weight gradient: one pass over it, not one a chunk
                grad_weight -= (eps / V) * hidden_sum
            ctx.save_for_backward(grad_hidden.to(hidden.dtype), grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_output.to(grad_hidden.dtype), (grad_weight * grad_output).to(ctx.weight_dtype),
                None if grad_bias is None else (grad_bias * grad_output).to(ctx.weight_dtype), None, None, None)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                         smoothing: float = 0.0) -> Tensor:
    """Summed label-smoothed cross-entropy of softmax(hidden @ weight^T + bias) against target.

    hidden (N, C) holds real tokens only (padding removed); weight (V, C) is the output layer; target (N,).
    The smoothed target puts 1 - smoothing on the right token and spreads `smoothing` evenly over the
    vocabulary (Szegedy et al., 2016), as the 2017 paper did with 0.1. Under bfloat16 autocast the matmuls
    run in bfloat16 and the softmax in float32. Equals
    F.cross_entropy(F.linear(hidden, weight, bias), target, label_smoothing=smoothing, reduction="sum").
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, target, smoothing, dtype)


def rdrop_loss(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, smoothing: float,
               alpha: float) -> Tensor:
    """R-Drop (Liang et al., 2021, eq. 3): the batch went through the model twice, with different dropout masks.
    hidden (2N, C) holds both passes' real tokens (the first pass's N, then the second's), target (N,) their
    targets. Returns both passes' summed label-smoothed cross-entropy plus, for every token, alpha/2 times the
    symmetric KL divergence of the two next-token distributions. The logits are made whole (2N x V), not chunked
    like linear_cross_entropy's: the divergence needs both passes' distributions side by side."""
    logits = linear(hidden, weight, bias)  # (2N, V); under autocast the product is bfloat16, the softmax float32
    log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=-1)
    picked = log_probs.gather(1, target.repeat(2)[:, None]).sum()
    loss = -(1 - smoothing) * picked - smoothing * log_probs.mean(dim=-1).sum()  # smoothed as linear_cross_entropy
    first, second = log_probs.chunk(2)  # (N, V) each: log p1, log p2
    divergence = (F.kl_div(second, first, log_target=True, reduction="sum")  # KL(p1 || p2)
                  + F.kl_div(first, second, log_target=True, reduction="sum"))  # KL(p2 || p1)
    return loss + 0.5 * alpha * divergence
