"""LACE on real emoji (issue #27 items 3 and 4): composed attribute requests and edits, read by pixel-space judges.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/emoji_compositional/evaluate.py \
        --flow outputs/emoji_compositional/flow_uncond/checkpoints/last.ckpt \
        --classifier outputs/emoji_compositional/classifier/classifier.pt \
        [--cfg-flow outputs/emoji25/fid_latent/checkpoints/last.ckpt] \
        [--num 128] [--scales 5 10] [--steps 10] [--parts judges,lace,cfg,edit] \
        [--out-dir outputs/emoji_compositional/eval] [--results experiments/emoji_compositional/results.json]
    .venv/bin/python experiments/emoji_compositional/evaluate.py --table experiments/emoji_compositional/results.json

``--flow`` is the base model of LACE: an unconditional emoji flow (``+experiment=emoji64_uncond``) or the
label-conditional emoji recipe, sampled then with its **null label** (its unconditional branch, trained with label
dropout 0.1). ``--classifier`` was trained for it (``python -m latent_flow.train_classifier
+experiment=emoji64_classifier``). ``--cfg-flow``: a label-conditional model for the label-CFG comparison of
``group`` (default: ``--flow`` when it is conditional; none: no comparison rows).

Parts (``--parts``; each row is kept in ``--results`` as soon as it is measured, and a rerun skips the rows already
there: resumable; ``--overwrite`` measures them again):

* ``judges``: one pixel-space CNN per attribute (``latent_flow.evaluation.attribute_judge``), trained on the real
  **training** emoji (cached in ``<cache-dir>/judges/``), scored on the real **held-out** emoji (accuracy, balanced
  accuracy, per value count and recall).
* ``lace``: for every request of :data:`REQUESTS` and guidance scale, ``--num`` samples (heun ``--steps``, the same
  noise seeds for every row), decoded and read by the judges: *accuracy* (the fraction satisfying the whole
  expression, boolean semantics of ``latent_flow.compositional.satisfied``), per term (the fraction with that
  attribute value; for a NOT term, the fraction that *has* the negated value), *unguided* (the same seeds without
  guidance: the base rate). Requests whose AND terms contain a combination held out of the classifier's training
  (its ``holdout``, in the checkpoint) are marked ``held-out``. FID / KID (``python -m latent_flow.evaluate
  images_dir=... evaluation.reference_npz=...``) against the real held-out emoji that satisfy the request (by their
  true attributes) where at least ``--min-reference`` exist, next to the unguided samples' FID / KID against the
  same subset.
* ``cfg``: requests with a ``group=X`` term: label CFG (``--cfg-scale``) on ``--cfg-flow`` with label X, plus
  classifier guidance (``--combo-scale``) for the other terms of an AND.
* ``edit``: ``--edit-num`` held-out real emoji of the ``people`` group (evenly spaced over them), each edited by
  every expression of ``--edits`` on its own (``latent_flow.compositional.edit_latents``, the code path of
  ``python -m latent_flow.edit``: inversion, then regeneration guided by the edit while the other attributes the
  classifier reads are anchored). Scored by the judges: *target reached* (over the sources that do not already
  have the target value, by their true attributes), *others kept* (each other attribute read the same on the edit
  as on the source); and by the distance to the source in the FID Inception's pool features (next to the
  reconstruction's, inversion + unguided regeneration, and the mean distance between two different sources).
* grids: ``grid_lace.png`` (a row of samples per request at ``--grid-scale``), ``grid_edit.png`` (source |
  reconstruction | one column per edit) in ``--figures-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latent_flow.api import load_model
from latent_flow.compositional import (
    ComposedEnergy,
    GuidanceSettings,
    edit_latents,
    load_classifier_for,
    parse,
    satisfied,
    terms,
    to_string,
    validate,
)
from latent_flow.compositional.editing import invert, regenerate
from latent_flow.compositional.expression import And, Term
from latent_flow.compositional.sampling import check_compatible, sample_composed
from latent_flow.data.emoji import EmojiDataset
from latent_flow.evaluation.attribute_judge import JudgeConfig, attribute_arrays, judge_attributes, load_or_train_judges
from latent_flow.evaluation.inception import InceptionFeatures
from latent_flow.evaluation.metrics import compute_features
from latent_flow.sampling.solvers import build_solver
from latent_flow.utils.images import from_uint8, make_grid_image, save_png, to_uint8

HERE = Path(__file__).parent
#: (kind, expression); ``held-out`` is decided from the classifier's holdout rules, not from this list
REQUESTS = [
    ("single", "group=people"),
    ("single", "group=animals"),
    ("single", "skin=dark"),
    ("single", "gender=female"),
    ("single", "color=blue"),
    ("AND", "group=flags & color=blue"),
    ("AND", "skin=light & gender=male"),
    ("AND", "group=animals & color=blue"),
    ("AND", "skin=dark & hair=red"),
    ("AND", "skin=dark & gender=female"),
    ("OR", "group=animals | group=food"),
    ("OR", "skin=light | skin=dark"),
    ("NOT", "!(group=people)"),
    ("NOT", "group=people & !(color=orange)"),
]
EDITS = ["skin=light", "skin=dark", "hair=red", "hair=white"]
PARTS = ("judges", "lace", "cfg", "edit")


# ------------------------------------------------------------------------------------------------ helpers
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def heldout_rule(expression: str, holdout: list[dict]) -> str | None:
    """The holdout rule (``"a=v & b=w"``) whose every pair is a positive top-level AND term of ``expression``."""
    node = parse(expression)
    children = node.children if isinstance(node, And) else [node]
    positive = {(t.attribute, t.value) for t in children if isinstance(t, Term)}
    for rule in holdout or []:
        pairs = {(k, str(v)) for k, v in rule.items() if not isinstance(v, list)}
        if pairs and pairs <= positive:
            return " & ".join(f"{k}={v}" for k, v in rule.items())
    return None


def split_group(expression: str) -> tuple[str | None, str | None]:
    """``(group value, the other AND terms as an expression or None)`` when ``expression`` is ``group=X`` or an
    AND with one positive ``group=X`` term; ``(None, None)`` otherwise (no label for label CFG)."""
    node = parse(expression)
    children = node.children if isinstance(node, And) else [node]
    groups = [c for c in children if isinstance(c, Term) and c.attribute == "group"]
    if len(groups) != 1 or not (isinstance(node, And) or isinstance(node, Term)):
        return None, None
    rest = [c for c in children if c is not groups[0]]
    return groups[0].value, (" & ".join(to_string(c) for c in rest) or None)


def truth_fn(attributes: dict[str, torch.Tensor], values: dict[str, list[str]]):
    """``value_of(term)`` for :func:`satisfied` from value indices per attribute."""

    def value_of(term: Term) -> torch.Tensor:
        return attributes[term.attribute] == values[term.attribute].index(term.value)

    return value_of


def score_request(expression: str, read: dict[str, torch.Tensor], values: dict[str, list[str]]) -> dict:
    """Joint accuracy and per-term fractions of one request on the judges' readings."""
    node = parse(expression)
    value_of = truth_fn(read, values)
    per_term = {}
    for term in terms(node):
        per_term[f"{term.attribute}={term.value}"] = float(value_of(term).float().mean())
    return {"accuracy": float(satisfied(node, value_of).float().mean()), "per_term": per_term}


def fid_kid(images_u8: np.ndarray, reference_u8: np.ndarray, folder: Path) -> dict:
    """FID / KID of ``images_u8`` against ``reference_u8`` by ``python -m latent_flow.evaluate images_dir=``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images_u8):
        save_png(img, folder / "images" / f"{i:06d}.png")
    np.savez(folder / "reference.npz", reference_u8)
    command = [
        sys.executable, "-m", "latent_flow.evaluate", f"images_dir={folder / 'images'}", f"out_dir={folder}",
        f"evaluation.reference_npz={folder / 'reference.npz'}", "metrics=[fid,kid]",
        f"hydra.run.dir={folder / 'hydra'}",
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    return {k: metrics.get(k) for k in ("fid", "kid_mean", "kid_std", "num_samples", "num_reference")}


class Results:
    """``results.json``, written after every row (resume: rows already there are skipped)."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() and not overwrite else {}
        self.data.setdefault("rows", {})
        self.data.setdefault("edits", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


# ------------------------------------------------------------------------------------------------ sampling
def sample_row(model, classifier, expression, *, scale, num, steps, batch, labels=None, cfg_scale=1.0, args=None):
    """``num`` samples (seeds 0..num-1) guided by ``expression`` at ``scale``: uint8 images, NFE, grad evals, s."""
    solver = build_solver("heun", steps=steps)
    settings = GuidanceSettings(scale=float(scale), max_weight=float(args.max_weight))
    energy = ComposedEnergy(expression, classifier) if expression else None
    images, nfe, grads = [], 0, 0
    start = time.perf_counter()
    for lo in range(0, num, batch):
        idx = list(range(lo, min(num, lo + batch)))
        lab = None if labels is None else torch.full((len(idx),), int(labels), dtype=torch.long)
        res = sample_composed(
            model, energy if energy is not None else _zero_energy, solver, indices=idx, labels=lab,
            cfg_scale=cfg_scale, seed=int(args.seed), settings=settings,
        )  # fmt: skip
        with torch.no_grad():
            images.append(to_uint8(model.decode(res.x)))
        nfe, grads = res.nfe, grads + res.grad_evals
    return np.concatenate(images), nfe, grads / max(1, -(-num // batch)), time.perf_counter() - start


def _zero_energy(x, t):  # scale 0 never calls it
    return torch.zeros(x.shape[0], device=x.device)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flow")
    p.add_argument("--classifier")
    p.add_argument("--cfg-flow", default=None)
    p.add_argument("--data-root", default=".cache/emoji")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--val-fraction", type=float, default=0.1, help="the held-out rule (split_by=design)")
    p.add_argument("--cache-dir", default=".cache")
    p.add_argument("--judge-steps", type=int, default=JudgeConfig().steps)
    p.add_argument("--num", type=int, default=128)
    p.add_argument("--scales", type=float, nargs="+", default=[5.0, 10.0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-weight", type=float, default=10.0)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--combo-scale", type=float, default=5.0)
    p.add_argument("--min-reference", type=int, default=50)
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--inception", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--requests", nargs="+", default=None, help="only these expressions (default: REQUESTS)")
    p.add_argument("--edits", nargs="+", default=EDITS)
    p.add_argument("--edit-num", type=int, default=16)
    p.add_argument("--edit-scale", type=float, default=5.0)
    p.add_argument("--anchor-weight", type=float, default=1.0)
    p.add_argument("--latent-weight", type=float, default=0.0)
    p.add_argument("--grid-scale", type=float, default=None)
    p.add_argument("--grid-samples", type=int, default=8)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="outputs/emoji_compositional/eval")
    p.add_argument("--results", default=str(HERE / "results.json"))
    p.add_argument("--figures-dir", default=str(HERE))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--table", default=None, help="print the tables of a results.json and exit")
    args = p.parse_args(argv)
    if args.table:
        print(tables(json.loads(Path(args.table).read_text())))
        return {}
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {unknown}; valid: {', '.join(PARTS)}")
    if set(parts) - {"judges"} and not (args.flow and args.classifier):
        raise SystemExit("--parts lace / cfg / edit need --flow <checkpoint> and --classifier <classifier.pt>")
    torch.set_num_threads(args.threads)
    out_dir, figures = Path(args.out_dir), Path(args.figures_dir)
    results = Results(Path(args.results), args.overwrite)
    common = dict(root=args.data_root, resolution=args.resolution, attributes=True, prepare=False,
                  val_fraction=args.val_fraction)  # fmt: skip
    train, held = EmojiDataset(split="train", **common), EmojiDataset(split="val", **common)
    names, values = list(held.attribute_names), {k: list(v) for k, v in held.attribute_values.items()}
    held_u8, held_attrs = attribute_arrays(held)
    true_held = {a: torch.from_numpy(held_attrs[:, j]) for j, a in enumerate(names)}

    judges = load_or_train_judges(args.cache_dir, train, held, config=JudgeConfig(steps=args.judge_steps), name="emoji")
    results.data["judges"] = {
        a: {"held_out": {k: v for k, v in j.metrics.get("held_out", {}).items() if k not in ("dataset", "confusion")},
            "train_seconds": j.metrics.get("train_seconds"), "key": j.metrics.get("key")}
        for a, j in judges.items()
    }  # fmt: skip
    results.data["data"] = {"train": repr(train), "held_out": repr(held), "held_out_images": len(held)}
    results.save()
    if parts == ["judges"]:
        return results.data

    model = load_model(args.flow, device="cpu")
    classifier, meta = load_classifier_for(model, args.classifier)
    holdout = list(meta.get("holdout") or [])
    cfg_model = (
        load_model(args.cfg_flow, device="cpu") if args.cfg_flow else (model if model.condition.uses_label else None)
    )
    results.data["settings"] = {
        "flow": str(args.flow), "flow_conditional": bool(model.condition.uses_label),
        "lace_labels": "null label (unconditional branch)" if model.condition.uses_label else "none (unconditional)",
        "classifier": str(args.classifier), "classifier_holdout": holdout, "cfg_flow": args.cfg_flow
        or (str(args.flow) if cfg_model is model else None), "num": args.num, "scales": args.scales,
        "sampler": f"heun {args.steps} steps", "cfg_scale": args.cfg_scale, "combo_scale": args.combo_scale,
        "max_weight": args.max_weight, "seed": args.seed, "min_reference": args.min_reference,
        "threads": args.threads,
    }  # fmt: skip
    requests = [(k, e) for k, e in REQUESTS if args.requests is None or e in args.requests]
    for _, e in requests:
        validate(parse(e), classifier.attribute_values, continuous=classifier.continuous, text=e)
    grid_rows: dict[str, np.ndarray] = {}
    grid_scale = args.grid_scale if args.grid_scale is not None else args.scales[len(args.scales) // 2]

    def measure(key: str, row: dict, images: np.ndarray, expression: str, reference: np.ndarray | None) -> None:
        read = judge_attributes(judges, images)
        row.update(score_request(expression, read, values))
        row["judged_values"] = {a: np.bincount(read[a].numpy(), minlength=len(values[a])).tolist() for a in read}
        if reference is not None and args.fid:
            row["fid_kid"] = fid_kid(images, reference, out_dir / "fid" / slug(key))
        np.savez_compressed(out_dir / "samples" / f"{slug(key)}.npz", images)
        results.data["rows"][key] = row
        results.save()
        print(f"{key}: accuracy {row['accuracy']:.3f} {row['per_term']}"
              + (f" FID {row['fid_kid']['fid']:.1f}" if row.get("fid_kid") else ""), flush=True)  # fmt: skip

    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    if "lace" in parts:
        unguided = None
        for kind, expression in requests:
            node = parse(expression)
            ref_mask = satisfied(node, truth_fn(true_held, values)).numpy()
            reference = held_u8[ref_mask] if ref_mask.sum() >= args.min_reference else None
            rule = heldout_rule(expression, holdout)
            base_key = f"unguided | {expression}"
            if base_key not in results.data["rows"]:
                if unguided is None:
                    unguided = sample_row(model, classifier, None, scale=0.0, num=args.num, steps=args.steps,
                                          batch=args.batch_size, args=args)  # fmt: skip
                row = {"kind": kind, "expression": expression, "method": "unguided", "scale": 0.0,
                       "heldout_rule": rule, "num_reference": int(ref_mask.sum()), "nfe": unguided[1],
                       "grad_evals": unguided[2], "seconds": round(unguided[3], 1)}  # fmt: skip
                measure(base_key, row, unguided[0], expression, reference)
            for scale in args.scales:
                key = f"lace {scale:g} | {expression}"
                if key in results.data["rows"]:
                    if scale == grid_scale and (out_dir / "samples" / f"{slug(key)}.npz").is_file():
                        grid_rows[expression] = np.load(out_dir / "samples" / f"{slug(key)}.npz")["arr_0"]
                    continue
                images, nfe, grads, seconds = sample_row(model, classifier, expression, scale=scale, num=args.num,
                                                         steps=args.steps, batch=args.batch_size, args=args)  # fmt: skip
                row = {"kind": kind, "expression": expression, "method": "LACE (classifier guidance)", "scale": scale,
                       "heldout_rule": rule, "num_reference": int(ref_mask.sum()), "nfe": nfe, "grad_evals": grads,
                       "seconds": round(seconds, 1)}  # fmt: skip
                measure(key, row, images, expression, reference)
                if scale == grid_scale:
                    grid_rows[expression] = images
        if grid_rows:
            rows = [imgs[: args.grid_samples] for imgs in grid_rows.values()]
            grid = from_uint8(np.concatenate(rows))
            save_png(make_grid_image(grid, args.grid_samples, upscale=2), figures / "grid_lace.png")
            results.data["grid_lace"] = {"scale": grid_scale, "rows": list(grid_rows)}
            results.save()

    if "cfg" in parts and cfg_model is not None:
        try:  # classifier guidance for the other terms needs the classifier's latent space and path
            check_compatible(cfg_model, meta, where=f"classifier {args.classifier}")
            combo_ok = True
        except ValueError as error:
            print(f"label CFG rows with other terms skipped: {error}")
            combo_ok = False
        for kind, expression in requests:
            group, rest = split_group(expression)
            if group is None or (rest and not combo_ok):
                continue
            key = f"label cfg {args.cfg_scale:g} | {expression}"
            if key in results.data["rows"]:
                continue
            node = parse(expression)
            ref_mask = satisfied(node, truth_fn(true_held, values)).numpy()
            reference = held_u8[ref_mask] if ref_mask.sum() >= args.min_reference else None
            label = values["group"].index(group)
            images, nfe, grads, seconds = sample_row(
                cfg_model, classifier if rest else None, rest, scale=args.combo_scale if rest else 0.0,
                num=args.num, steps=args.steps, batch=args.batch_size, labels=label, cfg_scale=args.cfg_scale,
                args=args,
            )  # fmt: skip
            method = f"label CFG {args.cfg_scale:g} (group={group})" + (
                f" + classifier guidance {args.combo_scale:g} ({rest})" if rest else "")  # fmt: skip
            row = {"kind": kind, "expression": expression, "method": method, "scale": args.combo_scale if rest else 0.0,
                   "heldout_rule": heldout_rule(expression, holdout), "num_reference": int(ref_mask.sum()),
                   "nfe": nfe, "grad_evals": grads, "seconds": round(seconds, 1)}  # fmt: skip
            measure(key, row, images, expression, reference)

    if "edit" in parts:
        run_edits(args, model, classifier, judges, held, held_u8, true_held, values, results, figures)
    return results.data


# ------------------------------------------------------------------------------------------------ editing
def run_edits(args, model, classifier, judges, held, held_u8, true_held, values, results, figures) -> None:
    people = np.flatnonzero(true_held["group"].numpy() == values["group"].index("people"))
    if len(people) == 0:
        print("edit: no held-out emoji of the people group; skipped")
        return
    pick = people[np.linspace(0, len(people) - 1, min(args.edit_num, len(people))).round().astype(int)]
    pick = np.unique(pick)
    key = f"edit scale {args.edit_scale:g} anchor {args.anchor_weight:g} latent {args.latent_weight:g} n {len(pick)}"
    if key in results.data["edits"]:
        return
    solver = build_solver("heun", steps=args.steps)
    settings = GuidanceSettings(scale=float(args.edit_scale), max_weight=float(args.max_weight))
    src_u8 = held_u8[pick]
    with torch.no_grad():
        x_data = model.autoencoder.encode(from_uint8(src_u8)).float()
    start = time.perf_counter()
    x_noise, _ = invert(model, x_data, solver)
    with torch.no_grad():
        x_rec, _ = regenerate(model, x_noise, solver)
        rec_u8 = to_uint8(model.decode(x_rec))
    columns = {"source": src_u8, "reconstruction": rec_u8}
    cost = {}
    for edit in args.edits:
        res = edit_latents(model, classifier, x_data, edit, solver=solver, settings=settings,
                           anchor_weight=args.anchor_weight, latent_weight=args.latent_weight)  # fmt: skip
        with torch.no_grad():
            columns[edit] = to_uint8(model.decode(res.x))
        cost[edit] = {"nfe_inversion": res.nfe_inversion, "nfe": res.nfe, "grad_evals": res.grad_evals}
    seconds = time.perf_counter() - start
    read = {name: judge_attributes(judges, imgs) for name, imgs in columns.items()}
    feats = inception_features(columns) if args.inception else None
    entry = {"sources": [held.describe(int(i)) for i in pick], "num_sources": len(pick), "scale": args.edit_scale,
             "anchor_weight": args.anchor_weight, "latent_weight": args.latent_weight, "seconds": round(seconds, 1),
             "per_edit": {}}  # fmt: skip
    if feats is not None:
        src = feats["source"]
        diffs = (src[:, None] - src[None]).norm(dim=-1)
        off = ~torch.eye(len(src), dtype=torch.bool)
        entry["inception_distance"] = {
            "reconstruction": float((feats["reconstruction"] - src).norm(dim=-1).mean()),
            "between_sources": float(diffs[off].mean()) if len(src) > 1 else None,
        }
    names = list(judges)
    for edit in args.edits:
        node = parse(edit)
        edited = {t.attribute for t in terms(node)}
        value_of = truth_fn(read[edit], values)
        reached = satisfied(node, value_of)
        already = satisfied(node, truth_fn({a: v[pick] for a, v in true_held.items()}, values))
        kept = {a: float((read[edit][a] == read["source"][a]).float().mean()) for a in names if a not in edited}
        all_kept = torch.ones(len(pick), dtype=torch.bool)
        for a in kept:
            all_kept &= read[edit][a] == read["source"][a]
        e = {
            "target_reached": float(reached[~already].float().mean()) if (~already).any() else None,
            "target_reached_all": float(reached.float().mean()),
            "sources_already_at_target": int(already.sum()),
            "others_kept": kept,
            "all_others_kept": float(all_kept.float().mean()),
            **cost[edit],
        }
        if feats is not None:
            e["inception_distance"] = float((feats[edit] - feats["source"]).norm(dim=-1).mean())
        entry["per_edit"][edit] = e
        print(f"edit {edit}: target reached {e['target_reached']}, others kept {kept}", flush=True)
    rows = min(len(pick), 8)
    grid = np.stack([columns[c][:rows] for c in columns], axis=1).reshape(-1, *src_u8.shape[1:])
    save_png(make_grid_image(from_uint8(grid), len(columns), upscale=2), figures / "grid_edit.png")
    entry["grid_columns"] = list(columns)
    results.data["edits"][key] = entry
    results.save()


def inception_features(columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """FID Inception pool features (2048) of every column's images."""
    extractor = InceptionFeatures()
    out = {}
    for name, imgs in columns.items():
        f, _ = compute_features(extractor, imgs)
        out[name] = f.float()
    return out


# ------------------------------------------------------------------------------------------------ tables
def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tables(data: dict) -> str:
    out = ["| attribute | held-out images | accuracy | balanced accuracy | per value: count (recall) |",
           "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for a, j in (data.get("judges") or {}).items():
        h = j.get("held_out") or {}
        per = ", ".join(f"{v} {d['count']} ({_f(d['recall'], 2)})" for v, d in (h.get("per_value") or {}).items())
        out.append(f"| {a} | {h.get('num_images', 0)} | {_f(h.get('accuracy'))} | {_f(h.get('balanced_accuracy'))} "
                   f"| {per} |")  # fmt: skip
    out += ["", "| kind | request | held-out combination | method | scale | joint accuracy | per term | "
            "FID / KID (N ref) | NFE / grad evals |", "| --- | --- | --- | --- | --- | ---: | --- | --- | --- |"]  # fmt: skip
    for r in (data.get("rows") or {}).values():
        fk = r.get("fid_kid")
        fid = f"{fk['fid']:.1f} / {fk['kid_mean']:.3f} ({r['num_reference']})" if fk else f"- ({r['num_reference']})"
        per = ", ".join(f"{t} {v:.2f}" for t, v in r["per_term"].items())
        mark = f"**{r['heldout_rule']}**" if r.get("heldout_rule") else ""
        out.append(f"| {r['kind']} | `{r['expression']}` | {mark} | {r['method']} | {r['scale']:g} | "
                   f"**{r['accuracy']:.3f}** | {per} | {fid} | {r['nfe']} / {r['grad_evals']:.0f} |")  # fmt: skip
    for key, e in (data.get("edits") or {}).items():
        out += ["", f"Edits ({key}; {e['num_sources']} held-out people emoji):", "",
                "| edit | target reached | all others kept | others kept (per attribute) | Inception distance to source |",
                "| --- | ---: | ---: | --- | ---: |"]  # fmt: skip
        dist = e.get("inception_distance") or {}
        for edit, d in e["per_edit"].items():
            kept = ", ".join(f"{a} {v:.2f}" for a, v in d["others_kept"].items())
            out.append(f"| `{edit}` | {_f(d['target_reached'])} | {_f(d['all_others_kept'])} | {kept} | "
                       f"{_f(d.get('inception_distance'), 2)} |")  # fmt: skip
        out.append(f"| (reconstruction) | - | - | - | {_f(dist.get('reconstruction'), 2)} |")
        out.append(f"| (two different sources) | - | - | - | {_f(dist.get('between_sources'), 2)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
