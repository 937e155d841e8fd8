"""Next-token cross-entropy whose backward is one pass over the logits.

Written out, the gradient of the mean cross-entropy needs only the per-row log-sum-exp of the forward:

    loss = mean_i (lse_i - x_{i, t_i}),   d loss / d x_ij = (exp(x_ij - lse_i) - [j = t_i]) / N

(the softmax cross-entropy gradient; Liger Kernel computes the same one, in its forward, in
linkedin/Liger-Kernel ``src/liger_kernel/ops/cross_entropy.py``). :class:`NextTokenCrossEntropy` computes
lse in the forward and the gradient in one elementwise pass in the backward, where autograd through
``F.cross_entropy`` differentiates log_softmax and the NLL gather apart. Compiled, on llama_1b's 16,384 x
128,256 logits per micro-batch (one H200), that took the loss kernels from 8.2 to 5.2 ms per micro-batch
and peak memory down 5.6 GiB (docs/performance.md). Both passes are float32 whatever the logits' dtype
(the upcast is fused, never stored), and every target counts (there is no ignore index: initlab's batches
have none). The trainer compiles them (:func:`build_next_token_loss` with ``compile = True``: one reduction
and one pointwise kernel); without compile it uses torch's ``F.cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def row_lse_and_target(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, V], targets [N] -> (log-sum-exp of each row, the target's logit), both float32 [N]."""
    x = logits.float()
    return torch.logsumexp(x, dim=-1), x.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                       grad_loss: torch.Tensor) -> torch.Tensor:
    """d (grad_loss x mean CE) / d logits = (softmax - one-hot) x grad_loss / N, in the logits' dtype [N, V]."""
    x = logits.float()
    vocab = torch.arange(x.shape[-1], device=x.device)
    one_hot = (vocab.unsqueeze(0) == targets.unsqueeze(-1)).float()
    return ((torch.exp(x - lse.unsqueeze(-1)) - one_hot) * (grad_loss / x.shape[0])).to(logits.dtype)


class NextTokenCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [N, V] against targets [N], saving [N] log-sum-exps for the backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, lse_fn: Callable, grad_fn: Callable):
        lse, target_logit = lse_fn(logits, targets)
        ctx.save_for_backward(logits, targets, lse)
        ctx.grad_fn = grad_fn
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        return ctx.grad_fn(logits, targets, lse, grad_loss), None, None, None


def fused_next_token_loss(compile: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits [b, T, V], targets [b, T]) -> mean next-token cross-entropy`` through
    :class:`NextTokenCrossEntropy`, its two passes compiled (``dynamic=False``: training and validation use
    one micro-batch shape) or eager."""
    lse_fn, grad_fn = row_lse_and_target, cross_entropy_grad
    if compile:
        lse_fn = torch.compile(lse_fn, fullgraph=True, dynamic=False)
        grad_fn = torch.compile(grad_fn, fullgraph=True, dynamic=False)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return NextTokenCrossEntropy.apply(logits.flatten(0, 1), targets.flatten(), lse_fn, grad_fn)

    return loss


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [b, T, V] (any dtype, computed in float32) against targets [b, T], by torch."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def build_next_token_loss(compile: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trainer's loss: the compiled one-pass kernels when compiling, else torch's ``F.cross_entropy``, whose
    fused eager kernels beat the hand-written passes run eagerly (CPU, debug model: 218 vs 281 ms per step)."""
    return fused_next_token_loss(compile=True) if compile else next_token_loss
