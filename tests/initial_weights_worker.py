"""torchrun worker for tests/test_export.py: ``load_initial_weights`` into an FSDP2-sharded model.

Usage: ``torchrun --nproc_per_node=N tests/initial_weights_worker.py JOBS.json OUT.pt`` where
JOBS.json is ``[{"source": PATH, "argv": [config args]}, ...]``. For each job every rank builds
and initializes the model exactly as training does (sharded, its own seed), loads the source
into its shards, and runs a forward pass on fixed tokens. Rank 0 saves per job the full tensors
(gathered with ``full_tensor()`` for the comparison only), the logits, the tokens and the report.
"""

from __future__ import annotations

import json
import sys

import torch

from components.build import build_model_and_init
from components.config import load_config
from components.weights_import import load_initial_weights
from distributed.env import distributed_session
from roles import canonical_name

TOKENS_SHAPE, TOKENS_VOCAB = (2, 16), 500  # below every vocabulary used by the tests


def run_job(source: str, argv: list[str], env) -> dict:
    cfg, _ = load_config(argv)
    model, _, _ = build_model_and_init(cfg, cfg.model.vocab_size, env)
    report = load_initial_weights(model, source, env)
    # Gathered before the forward pass: FSDP2 leaves the root's and last block's parameters unsharded after it.
    state = {canonical_name(name): p.full_tensor() for name, p in model.named_parameters()}
    tokens = torch.randint(0, TOKENS_VOCAB, TOKENS_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
    return {"report": report, "state": state, "logits": logits, "tokens": tokens}


def main(jobs_path: str, out_path: str) -> None:
    with distributed_session("cpu") as env:
        results = [run_job(job["source"], job["argv"], env) for job in json.loads(open(jobs_path).read())]
        if env.is_main:
            torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
