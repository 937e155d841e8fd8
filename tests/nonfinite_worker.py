"""``train.main`` with a NaN injected, for tests/test_run_dir.py: ``python tests/nonfinite_worker.py CASES_JSON``,
a JSON list of ``[WHERE, argv]`` cases run one after another in this interpreter (each a complete
``python train.py argv`` run with its own injection); after each one a stdout line
``RESULT {"rc": int, "stderr": str}`` is printed and flushed.

WHERE = ``weight``: layer 1's attn.q weight holds a NaN from the start (its local shard, after init);
``grad``: at step 3, layer 0's mlp.out gradient gets a NaN just before the gradient clip. The run
must stop naming that tensor, not one the optimizer step would have poisoned after it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import torch

import train
from distributed.placement import local_shard


def inject_into_weight() -> None:
    build = train.build_model_and_init

    def build_with_nan(*args, **kwargs):
        model, model_args, initializer = build(*args, **kwargs)
        with torch.no_grad():
            local_shard(dict(model.named_parameters())["layers.1.attn.q.weight"]).view(-1)[0] = float("nan")
        return model, model_args, initializer

    train.build_model_and_init = build_with_nan


def inject_into_grad(at_step: int = 3) -> None:
    clip = train.clip_grad_norm_
    calls = {"n": 0}

    def clip_with_nan(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls["n"] += 1
        if calls["n"] == at_step:
            model_params = dict(train_model["model"].named_parameters())
            grad = model_params["layers.0.mlp.out.weight"].grad
            local_shard(grad).view(-1)[0] = float("nan")
        return clip(parameters, max_norm, *args, **kwargs)

    train.clip_grad_norm_ = clip_with_nan
    init = train.Trainer.__init__

    def remember_model(self, *args, **kwargs):
        init(self, *args, **kwargs)
        train_model["model"] = self.model

    train.Trainer.__init__ = remember_model


train_model: dict = {}



def main(cases: list[tuple[str, list[str]]]) -> None:
    for where, argv in cases:
        originals = train.build_model_and_init, train.clip_grad_norm_, train.Trainer.__init__
        {"weight": inject_into_weight, "grad": inject_into_grad}[where]()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = train.main(argv)
        train.build_model_and_init, train.clip_grad_norm_, train.Trainer.__init__ = originals
        print("RESULT " + json.dumps({"rc": rc, "stderr": err.getvalue()}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
