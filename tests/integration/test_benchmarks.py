"""The GPU training benchmark runs (here on the CPU, tiny) and prints / writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_train_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_train.py"),
            "--device",
            "cpu",
            "--experiments",
            "imagenet_dit",
            "--latent-size",
            "8",
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
            "backbone=dit_xs2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    row = rows[0]
    assert row["experiment"] == "imagenet_dit" and row["backbone"] == "DiT-XS/2" and row["latent_shape"] == [4, 8, 8]
    assert row["timed_steps"] == 2 and row["images_per_second"] > 0 and row["peak_memory_GiB"] is None
    assert "| imagenet_dit | DiT-XS/2 |" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_train_benchmark_refuses_cuda_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr
