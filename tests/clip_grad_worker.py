"""torchrun worker for tests/test_optim.py: clip_grad_norm_ on FSDP2 / HSDP DTensor gradients.

Usage: ``torchrun --nproc_per_node=N tests/clip_grad_worker.py OUT.json FAMILY REPLICATE``.
Each rank backpropagates its own batch through a 2-layer debug model (vocab 257, so the
embedding's rows split unevenly), then compares ``clip_grad_norm_`` with a reference computed
from the full gradients (``full_tensor()``, gathered here for the comparison only). Rank 0
writes the measurements as JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from components.build import build_model_and_init
from components.config import load_config
from components.optim import clip_grad_norm_
from distributed.env import DistEnv, distributed_session

VOCAB = 257  # odd: Shard(0) of the embedding gives ranks 129 and 128 rows


@contextlib.contextmanager
def forbid_host_sync():
    """Make every tensor -> Python conversion (item, bool, float, int, tolist) raise inside the block."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("host sync: a tensor was converted to a Python value")

    names = ("item", "__bool__", "__float__", "__int__", "tolist")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def full_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad.full_tensor() for p in params]


def l2_norm(tensors: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors])).item()


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


def backward_once(family: str, env: DistEnv) -> list[torch.Tensor]:
    """Build the sharded model, run forward/backward on this rank's batch; return its parameters."""
    cfg, _ = load_config(["--model.name", family, "--model.n_layers", "2", "--init.scheme", "normal",
                          "--training.seq_len", "16"])
    model, _, _ = build_model_and_init(cfg, VOCAB, env)
    generator = torch.Generator().manual_seed(100 + env.rank)  # a different batch per rank
    tokens = torch.randint(0, VOCAB, (2, 16), generator=generator)  # [B, T]
    logits = model(tokens)  # [B, T, vocab]
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return list(model.parameters())


def measure(family: str, env: DistEnv) -> dict:
    params = backward_once(family, env)
    reference = full_grads(params)
    ref_norm = l2_norm(reference)
    results = {"world_size": env.world_size, "mesh_shape": list(env.mesh.shape), "ref_norm": ref_norm,
               "placements": sorted({str(p.grad.placements) for p in params})}

    norm_only = clip_grad_norm_(params, 0.0)
    results["norm_only"] = norm_only.item()
    results["norm_only_changed_grads"] = max_abs_diff(full_grads(params), reference)
    results["norm_for_loop"] = clip_grad_norm_(params, 0.0, foreach=False).item()
    results["norm_large_max"] = clip_grad_norm_(params, 10 * ref_norm).item()
    results["large_max_changed_grads"] = max_abs_diff(full_grads(params), reference)

    max_norm = 0.25 * ref_norm
    with forbid_host_sync():
        clipped = clip_grad_norm_(params, max_norm)
    results.update(returned_type=type(clipped).__name__, returned_dim=clipped.dim(), max_norm=max_norm,
                   norm_clipped_call=clipped.item())
    after = full_grads(params)
    results["norm_after_clip"] = l2_norm(after)
    scale = max_norm / (ref_norm + 1e-6)
    results["clip_scale_error"] = max_abs_diff(after, [g * scale for g in reference])
    all_norms = [None] * env.world_size
    dist.all_gather_object(all_norms, clipped.item())
    results["norm_on_every_rank"] = all_norms

    # The last shard goes non-finite, in every replica (replicas hold identical shards under HSDP).
    if env.mesh.get_coordinate()[-1] == env.mesh.shape[-1] - 1:
        params[0].grad.to_local().view(-1)[0] = float("inf")
    poisoned = full_grads(params)
    nonfinite = clip_grad_norm_(params, 1e-3).item()
    results["norm_nonfinite_on_every_rank"] = [None] * env.world_size
    dist.all_gather_object(results["norm_nonfinite_on_every_rank"], nonfinite)
    results["nonfinite_grads_unchanged"] = all(torch.equal(x, y) for x, y in zip(full_grads(params), poisoned))
    return results


def main() -> None:
    out_path, family, replicate = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with distributed_session("cpu", replicate=replicate) as env:
        results = measure(family, env)
        if env.is_main:
            with open(out_path, "w") as f:
                json.dump(results, f)


if __name__ == "__main__":
    main()
