"""``python -m latent_flow.evaluate`` with ``cfg_interval=[t_lo,t_hi]``, for these measurements.

``latent_flow.evaluate`` (owned by another change) does not yet pass ``cfg_interval`` to
``model.sample_latents``; until it does (one keyword in ``evaluate._generate``), this wrapper
passes it (``sample_latents``'s default is set to the interval) and adds the key to the config
(``++cfg_interval=...``: adds the key, or sets it once evaluate.yaml has it), so ``metrics.json`` / ``recipe.json`` record it through
``sample.sampling_settings``. Every other argument goes to ``latent_flow.evaluate`` unchanged.

    .venv/bin/python experiments/beyond/evaluate_with_interval.py cfg_interval=[0.3,1.0] ckpt_path=... num_samples=500
"""

from __future__ import annotations

import sys

import yaml


def main() -> None:
    interval, rest = None, []
    for arg in sys.argv[1:]:
        if arg.startswith("cfg_interval="):
            interval = yaml.safe_load(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    from latent_flow.sampling.guidance import check_guidance_interval
    from latent_flow.training.module import LatentFlowModule

    interval = check_guidance_interval(interval)
    original = LatentFlowModule.sample_latents

    def sample_latents(self, solver, **kwargs):
        kwargs.setdefault("cfg_interval", interval)
        return original(self, solver, **kwargs)

    LatentFlowModule.sample_latents = sample_latents
    if interval is not None:
        rest.append(f"++cfg_interval=[{interval[0]},{interval[1]}]")  # adds or overrides the key
    sys.argv = [sys.argv[0], *rest]
    from latent_flow.evaluate import main as evaluate_main

    evaluate_main()


if __name__ == "__main__":
    main()
