"""Initialization of LoRA adapter matrices, independent of the base scheme.

An adapter on a projection of role R (fan-in n) has roles ``R.lora_a`` (A, [r, n]) and
``R.lora_b`` (B, [m, r]). With B = 0 the adapted model computes exactly what the base model
does, so a pretrained model (``init.from_checkpoint``) starts unchanged and only training moves it.

- A, ``init.lora_a_init = "kaiming_uniform"``: U(-1/sqrt(n), 1/sqrt(n)), std 1/sqrt(3n): torch's
  ``kaiming_uniform_(a=sqrt(5))`` as PEFT applies it to ``lora_A`` (its default).
- A, ``"gaussian"``: N(0, (1/r)^2), i.e. std 1/r (PEFT ``init_lora_weights="gaussian"``:
  ``nn.init.normal_(lora_A, std=1 / r)`` in peft/tuners/lora/layer.py; the LoRA paper, Hu et al.
  2021, arXiv:2106.09685, says "random Gaussian" without a std).
- B, ``init.lora_b_init = "zeros"``: 0 (the LoRA paper, PEFT). ``"gaussian"``: std 1/r as for A, an
  ablation in which the adapted model no longer starts as the base model.
"""

from __future__ import annotations

import math

from init_schemes.base import InitSpec, constant, fans, normal, uniform


def adapter_spec(role: str, args, opts) -> InitSpec:
    """The spec of adapter role ``<projection>.lora_a`` / ``<projection>.lora_b``."""
    projection, _, matrix = role.rpartition(".")
    rank_std = 1.0 / args.lora_rank
    if matrix == "lora_a":
        if opts.lora_a_init == "gaussian":
            return normal(rank_std)
        fan_in, _ = fans(projection, args)
        return uniform(1.0 / math.sqrt(3 * fan_in))  # bound sqrt(3) * std = 1/sqrt(fan_in)
    if matrix == "lora_b":
        return normal(rank_std) if opts.lora_b_init == "gaussian" else constant(0.0)
    raise ValueError(f"{role!r} is not an adapter role (<projection>.lora_a or .lora_b)")
