"""Measure compositional control on `shapes` with the shapes oracle (issue 7, point 5).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/compositional/evaluate_compositional.py \
        --flow outputs/compositional/flow_uncond_unet_t/checkpoints/last.ckpt \
        --classifier outputs/compositional/classifier_holdout_w48/classifier.pt \
        --cfg-flow outputs/train/2026-11-22_03-25-46/checkpoints/last.ckpt \
        --num 256 --scales 2 5 10 --out experiments/compositional/results.json

For every request (an expression) it samples ``--num`` images from the *unconditional* flow
guided by the composed classifier energy (heun, ``--steps`` steps, same noise seeds for every
request), decodes them, lets the oracle read every attribute and reports:

- ``accuracy``: the fraction of samples whose oracle attributes satisfy the whole expression
  (boolean semantics of :func:`latent_flow.compositional.expression.satisfied`);
- ``unguided``: the same fraction for unguided samples of the same seeds (the base rate);
- ``fd``: FD-shapes between the samples and ``--num`` real renders satisfying the expression
  (a fresh ``ShapesDataset`` pool, seed 777), with ``fd_floor``: real subset vs another disjoint
  real subset of the same size (FD at small N is biased upwards; compare to the floor);
- costs: NFE and classifier-gradient evaluations per sample.

With ``--cfg-flow`` (a label-conditional checkpoint), ``shape=X`` requests are also answered by
classifier-free guidance (label X, scale ``--cfg-scale``) for comparison, and label CFG is
combined with classifier guidance for ``shape=X & color=Y`` requests.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from latent_flow.api import load_model
from latent_flow.compositional import (
    ComposedEnergy,
    GuidanceSettings,
    load_classifier_for,
    parse,
    sample_composed,
    satisfied,
)
from latent_flow.data.shapes import ATTRIBUTE_NAMES, ShapesDataset
from latent_flow.evaluation.oracle import fd_shapes, load_or_train_oracle
from latent_flow.sampling.noise import noise_for_indices
from latent_flow.sampling.solvers import build_solver

REQUESTS = [
    # (group, expression)
    ("seen", "shape=triangle"),
    ("seen", "shape=star"),
    ("seen", "shape=square & color=green"),
    ("seen", "shape=star & color=cyan"),
    ("seen", "color=magenta & size=small"),
    ("held-out", "shape=triangle & color=red"),
    ("held-out", "color=blue & size=large"),
    ("OR", "color=red | color=blue"),
    ("OR", "shape=circle | shape=square"),
    ("NOT", "!(color=blue)"),
    ("NOT", "!(shape=circle) & !(shape=square)"),
    ("NOT", "shape=triangle & !(color=red)"),
]


def real_pool(n: int, seed: int = 777):
    data = ShapesDataset(num_samples=n, resolution=32, seed=seed)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    attrs = np.empty((n, len(ATTRIBUTE_NAMES)), dtype=np.int64)
    for i in range(n):
        img, a, _ = data.render(i)
        images[i] = img
        attrs[i] = [a[k] for k in ATTRIBUTE_NAMES]
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0, torch.from_numpy(attrs), data


def read_attributes(oracle, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = oracle(images, segment=False)
    return torch.stack([out[k].argmax(1) for k in ATTRIBUTE_NAMES], dim=1)


def satisfied_mask(expression: str, attrs: torch.Tensor, values: dict) -> torch.Tensor:
    def value_of(term):
        return attrs[:, ATTRIBUTE_NAMES.index(term.attribute)] == values[term.attribute].index(term.value)

    return satisfied(parse(expression), value_of)


def markdown_table(results: dict) -> str:
    """The README table of a results.json."""
    lines = [
        "| group | request | method | scale | oracle accuracy | unguided rate | FD-shapes (floor) | terms | NFE / grad evals |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        fd = f"{r['fd']:.0f} ({r['fd_floor']:.0f})" if "fd_floor" in r else (f"{r['fd']:.0f}" if "fd" in r else "-")
        base = f"{r['unguided']:.3f}" if "unguided" in r else "-"
        terms = ", ".join(f"{k} {v:.2f}" for k, v in r["terms"].items()) if len(r["terms"]) > 1 else ""
        lines.append(
            f"| {r['group']} | `{r['expression']}` | {r['method']} | {r['scale'] if r['scale'] is not None else '-'} | "
            f"**{r['accuracy']:.3f}** | {base} | {fd} | {terms} | {r['nfe']} / {r['grad_evals']} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(__import__("sys").argv) == 3 and __import__("sys").argv[1] == "--table":
        print(markdown_table(json.loads(Path(__import__("sys").argv[2]).read_text())))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--flow", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--cfg-flow", default=None)
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--combo-scale", type=float, default=5.0, help="classifier guidance scale next to label CFG")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--scales", type=float, nargs="+", default=[2.0])
    ap.add_argument("--max-weight", type=float, default=10.0)
    ap.add_argument("--pool", type=int, default=30000)
    ap.add_argument("--only", nargs="*", default=None, help="evaluate only these expressions")
    ap.add_argument("--out", default="experiments/compositional/results.json")
    args = ap.parse_args()
    start = time.time()

    model = load_model(args.flow, device="cpu")
    classifier, meta = load_classifier_for(model, args.classifier)
    oracle = load_or_train_oracle(".cache", resolution=32)
    solver = build_solver("heun", steps=args.steps)
    indices = range(args.num)
    reals, real_attrs, data = real_pool(args.pool)
    values = data.attribute_values
    requests = [r for r in REQUESTS if args.only is None or r[1] in args.only]
    results = {"settings": vars(args), "classifier_holdout": meta.get("holdout"), "rows": []}

    def evaluate(images: torch.Tensor, expression: str) -> dict:
        attrs = read_attributes(oracle, images)
        ok = satisfied_mask(expression, attrs, values)
        real_ok = satisfied_mask(expression, real_attrs, values)
        subset = reals[real_ok]
        row = {"accuracy": float(ok.float().mean()), "num_real_matching": int(real_ok.sum())}
        n = len(images)
        if len(subset) >= 2 * n:
            row["fd"] = fd_shapes(oracle, images, subset[:n])
            row["fd_floor"] = fd_shapes(oracle, subset[n : 2 * n], subset[:n])
        elif len(subset) >= n:
            row["fd"] = fd_shapes(oracle, images, subset[:n])
        # per-term accuracy (each condition on its own)
        row["terms"] = {
            f"{t.attribute}={t.value}": float(
                (attrs[:, ATTRIBUTE_NAMES.index(t.attribute)] == values[t.attribute].index(t.value)).float().mean()
            )
            for t in __import__("latent_flow.compositional.expression", fromlist=["terms"]).terms(parse(expression))
        }
        return row

    # unguided samples: the base rate of every request
    t0 = time.time()
    x_init = noise_for_indices(indices, model.latent_shape, seed=0)
    with torch.no_grad():
        unguided = model.decode(solver.sample(model.velocity_fn({}, use_ema=True), x_init).x)
    unguided_attrs = read_attributes(oracle, unguided)
    results["unguided"] = {
        "seconds": round(time.time() - t0, 1),
        "fd_vs_all_real": fd_shapes(oracle, unguided, reals[: args.num]),
        "fd_floor_all_real": fd_shapes(oracle, reals[args.num : 2 * args.num], reals[: args.num]),
    }
    print("unguided", results["unguided"], flush=True)

    for group, expression in requests:
        base_rate = float(satisfied_mask(expression, unguided_attrs, values).float().mean())
        for scale in args.scales:
            t0 = time.time()
            energy = ComposedEnergy(expression, classifier)
            res = sample_composed(
                model,
                energy,
                solver,
                indices=indices,
                seed=0,
                settings=GuidanceSettings(scale=scale, max_weight=args.max_weight),
            )
            images = model.decode(res.x)
            row = {
                "group": group,
                "expression": expression,
                "method": "uncond flow + classifier guidance",
                "scale": scale,
                "unguided": base_rate,
                **evaluate(images, expression),
                "nfe": res.nfe,
                "grad_evals": res.grad_evals,
                "seconds": round(time.time() - t0, 1),
            }
            results["rows"].append(row)
            print(json.dumps(row), flush=True)

    if args.cfg_flow:
        cfg_model = load_model(args.cfg_flow, device="cpu")
        cfg_classifier, _ = load_classifier_for(cfg_model, args.classifier)
        shapes = values["shape"]
        for group, expression in requests:
            node = parse(expression)
            from latent_flow.compositional.expression import And, Term

            shape_terms = [
                c
                for c in ([node] if isinstance(node, Term) else node.children if isinstance(node, And) else [])
                if isinstance(c, Term) and c.attribute == "shape"
            ]
            if not shape_terms:
                continue
            label = torch.full((args.num,), shapes.index(shape_terms[0].value))
            rest = [c for c in (node.children if isinstance(node, And) else []) if c is not shape_terms[0]]
            t0 = time.time()
            if rest:  # label CFG for the shape + classifier guidance for the other conditions
                rest_expr = " & ".join(
                    (
                        f"{c.attribute}={c.value}"
                        if isinstance(c, Term)
                        else "!(" + f"{c.child.attribute}={c.child.value}" + ")"
                    )
                    for c in rest
                )
                energy = ComposedEnergy(rest_expr, cfg_classifier)
                scale = args.combo_scale
                res = sample_composed(
                    cfg_model,
                    energy,
                    solver,
                    indices=indices,
                    labels=label,
                    cfg_scale=args.cfg_scale,
                    seed=0,
                    settings=GuidanceSettings(scale=scale, max_weight=args.max_weight),
                )
                method = f"label CFG {args.cfg_scale} (shape) + classifier guidance ({rest_expr})"
                x, nfe, grads = res.x, res.nfe, res.grad_evals
            else:
                with torch.no_grad():
                    out = cfg_model.sample_latents(
                        solver, indices=indices, labels=label, cfg_scale=args.cfg_scale, seed=0
                    )
                method, x, nfe, grads, scale = f"label CFG {args.cfg_scale}", out.x, out.nfe, 0, None
            images = cfg_model.decode(x)
            row = {
                "group": group,
                "expression": expression,
                "method": method,
                "scale": scale,
                **evaluate(images, expression),
                "nfe": nfe,
                "grad_evals": grads,
                "seconds": round(time.time() - t0, 1),
            }
            results["rows"].append(row)
            print(json.dumps(row), flush=True)

    results["seconds"] = round(time.time() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['seconds']}s)")


if __name__ == "__main__":
    main()
