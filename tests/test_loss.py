"""components/loss.py: the hand-written cross-entropy backward against F.cross_entropy's autograd, eager and compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.loss import build_next_token_loss, fused_next_token_loss, next_token_loss

BATCH, SEQ, VOCAB = 3, 7, 50


def logits_and_targets(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(BATCH, SEQ, VOCAB, generator=generator)).to(dtype).requires_grad_()
    return logits, torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)


def reference(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's own cross-entropy and its autograd gradient, in float64."""
    logits64 = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(logits64.flatten(0, 1), targets.flatten())
    (scale * loss).backward()
    return loss.detach(), logits64.grad


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("compiled", [False, True])
def test_loss_and_gradient_equal_torch_cross_entropy(dtype, tol, compiled):
    loss_fn = fused_next_token_loss(compile=compiled)
    logits, targets = logits_and_targets(dtype)
    scale = 0.25  # a micro-batch's 1/accumulation: the gradient carries the incoming scale
    loss = loss_fn(logits, targets)
    (scale * loss).backward()
    ref_loss, ref_grad = reference(logits, targets, scale)
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)  # the logits' own values, upcast exactly
    torch.testing.assert_close(logits.grad.double(), ref_grad, rtol=tol, atol=tol * ref_grad.abs().max().item())


def test_gradient_rows_sum_to_zero_and_target_entries_are_negative():
    logits, targets = logits_and_targets(torch.float32, seed=1)
    fused_next_token_loss(compile=False)(logits, targets).backward()
    grad = logits.grad.flatten(0, 1)
    torch.testing.assert_close(grad.sum(-1), torch.zeros(BATCH * SEQ), atol=1e-7, rtol=0)
    assert (grad.gather(-1, targets.flatten().unsqueeze(-1)) < 0).all()


def test_the_trainer_compiles_the_fused_loss_and_uses_torch_eagerly():
    logits, targets = logits_and_targets(torch.float32, seed=2)
    assert build_next_token_loss(compile=False) is next_token_loss
    eager, compiled = next_token_loss(logits, targets), build_next_token_loss(compile=True)(logits, targets)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-6)
    assert eager.item() == pytest.approx(F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item(), rel=0)
