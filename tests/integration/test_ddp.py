"""Distributed training and rank-split latent encoding (2 CPU processes, gloo backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from conftest import TINY_TRAIN
from latent_flow.autoencoders import IdentityAutoencoder
from latent_flow.data.datamodule import LatentDataModule
from latent_flow.data.latent_cache import LatentCache, build_cache_distributed
from latent_flow.utils.distributed import distributed_rank

ROOT = Path(__file__).resolve().parents[2]

#: overrides shared by the encode and train commands so both select the same autoencoder + cache
DATA_AE = [o for o in TINY_TRAIN if o.startswith(("data.dataset.", "autoencoder."))]


def _env(tmp_path: Path) -> dict:
    env = {
        **os.environ,
        "LATENT_FLOW_ROOT": str(tmp_path),
        "LATENT_FLOW_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "",
        "HYDRA_FULL_ERROR": "1",
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    return env


def _run(cmd: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


# ---------------------------------------------------------------------------------------- DDP training
def test_ddp_two_cpu_processes_stay_in_sync_and_draw_different_noise(tmp_path):
    # encode first (this also trains the tiny autoencoder), so that both ranks start training from
    # identical RNG states: without per-rank seeding they would then draw identical noise
    _run([sys.executable, "-m", "latent_flow.encode", *DATA_AE, f"hydra.run.dir={tmp_path / 'enc'}"], tmp_path)
    run_dir = tmp_path / "run"
    _run(
        [
            sys.executable,
            "-m",
            "latent_flow.train",
            *TINY_TRAIN,
            "trainer=ddp_sim",  # 2 CPU processes over gloo
            "logger=none",
            "seed=42",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    sync = json.loads((run_dir / "ddp_sync.json").read_text())
    assert sync["world_size"] == 2 and sync["global_step"] == 6 and sync["in_sync"]
    r0, r1 = sync["ranks"]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert (r0["seed"], r1["seed"]) == (42, 43)
    assert r0["backbone_checksum"] == r1["backbone_checksum"]
    assert r0["ema_checksum"] == r1["ema_checksum"]
    assert np.isfinite(r0["first_noise_checksum"]) and np.isfinite(r1["first_noise_checksum"])
    assert r0["first_noise_checksum"] != r1["first_noise_checksum"], "ranks drew identical noise"
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 6
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_torchrun_encode_splits_shards_and_only_rank0_summarises(tmp_path):
    proc = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=0",
            "-m",
            "latent_flow.encode",
            "autoencoder=pixel_s2d",
            "data.dataset.num_samples=40",
            "shard_size=8",
            "batch_size=8",
            f"hydra.run.dir={tmp_path / 'enc'}",
        ],
        tmp_path,
        timeout=180,
    )
    out = proc.stdout
    assert "[rank 0/2] encoded shards [0, 2, 4] of 5" in out
    assert "[rank 1/2] encoded shards [1, 3] of 5" in out
    assert out.count("latent cache:") == 1
    metas = list((tmp_path / "cache" / "latents").glob("*/meta.json"))
    assert len(metas) == 1 and json.loads(metas[0].read_text())["num_items"] == 40


# ---------------------------------------------------------------------------------------- rank-split build
class TinyImages(Dataset):
    def __init__(self, n: int = 22, resolution: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1
        self.num_classes = 3

    def fingerprint(self) -> str:
        return f"tiny-ddp-{len(self.images)}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {"image": self.images[i], "label": torch.tensor(i % 3), "index": torch.tensor(i)}


def _cache(root: Path) -> LatentCache:
    return LatentCache(root, TinyImages(), IdentityAutoencoder(), flip=True, shard_size=4, batch_size=3)


def _contents(cache: LatentCache) -> tuple[np.ndarray, np.ndarray, dict]:
    meta = json.loads(cache.meta_path.read_text())
    lat = np.concatenate([np.load(cache._shard_paths(s)["latents"]) for s in range(cache.num_shards)])
    lab = np.concatenate([np.load(cache._shard_paths(s)["labels"]) for s in range(cache.num_shards)])
    return lat, lab, meta


def test_rank_split_build_equals_single_process_build(tmp_path):
    single = _cache(tmp_path / "single")
    single.build(progress=False)
    split = _cache(tmp_path / "split")
    errors: list[BaseException] = []

    def rank(r: int, delay: float) -> None:
        try:
            time.sleep(delay)
            build_cache_distributed(_cache(tmp_path / "split"), r, 2, progress=False, timeout=30, poll=0.05)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    # rank 1 starts late: rank 0 must wait for its shards before writing meta.json
    threads = [threading.Thread(target=rank, args=(0, 0.0)), threading.Thread(target=rank, args=(1, 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert split.is_complete()
    lat_a, lab_a, meta_a = _contents(single)
    lat_b, lab_b, meta_b = _contents(split)
    np.testing.assert_array_equal(lat_a, lat_b)
    np.testing.assert_array_equal(lab_a, lab_b)
    for key in ("num_items", "num_views", "latent_shape", "num_shards"):
        assert meta_a[key] == meta_b[key]
    np.testing.assert_allclose(meta_a["mean"], meta_b["mean"], rtol=1e-6)
    np.testing.assert_allclose(meta_a["std"], meta_b["std"], rtol=1e-6)


def test_datamodule_prepare_data_uses_the_rank_from_the_environment(tmp_path, monkeypatch):
    # rank 1 of 2 alone: encodes only its shards, then times out waiting for rank 0's meta.json
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LATENT_FLOW_CACHE_WAIT_TIMEOUT", "0.3")
    import latent_flow.data.latent_cache as enc

    monkeypatch.setattr(enc, "DEFAULT_WAIT_TIMEOUT", 0.3)
    dm = LatentDataModule(TinyImages(), IdentityAutoencoder(), cache_dir=tmp_path, shard_size=4, encode_batch_size=4)
    with pytest.raises(TimeoutError, match="rank 1 waited"):
        dm.prepare_data()
    assert dm.cache.shards_done() == [1, 3, 5]
    # rank 0 then finishes the cache; rank 1 sees it complete
    monkeypatch.setenv("RANK", "0")
    dm0 = LatentDataModule(TinyImages(), IdentityAutoencoder(), cache_dir=tmp_path, shard_size=4, encode_batch_size=4)
    dm0.prepare_data()
    assert dm0.cache.is_complete()


def test_rank0_times_out_clearly_when_a_rank_never_comes(tmp_path):
    with pytest.raises(TimeoutError, match=r"missing shards \[1, 3, 5\]"):
        build_cache_distributed(_cache(tmp_path), 0, 2, progress=False, timeout=0.3, poll=0.05)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, (3, 8)),  # torchrun
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2", "NODE_RANK": "0"}, (1, 2)),  # Lightning's launcher
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "4", "NODE_RANK": "1"}, (0, 1)),  # cannot place: build alone
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16"}, (5, 16)),  # srun
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (0, 1)),
        ({"WORLD_SIZE": "1", "RANK": "0"}, (0, 1)),
        ({"WORLD_SIZE": "1", "RANK": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "8"}, (0, 1)),  # torchrun in SLURM
    ],
)
def test_distributed_rank_from_environment(env, expected):
    assert distributed_rank(env) == expected


def test_only_rank_zero_trains_the_autoencoder(tmp_path, monkeypatch):
    """Under torchrun / srun a rank > 0 waits for rank 0's autoencoder file instead of training its own."""
    import threading

    from latent_flow.data import ShapesDataset
    from latent_flow.training.autoencoder import autoencoder_cache_path, ensure_autoencoder

    ae_cfg = {
        "name": "kl",
        "ckpt_path": None,
        "train_if_missing": True,
        "config": {"latent_channels": 4, "base_channels": 8, "channel_mult": [1, 2]},
        "training": {"max_steps": 2, "batch_size": 8},
    }
    data = ShapesDataset(num_samples=32, resolution=16)
    path = autoencoder_cache_path(ae_cfg, data, tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(ae=ensure_autoencoder(ae_cfg, data, cache_dir=tmp_path, output_dir=tmp_path)[0])
    )
    waiter.start()
    time.sleep(3)
    assert waiter.is_alive() and not path.exists()  # rank 1 waits, it does not train
    monkeypatch.setenv("RANK", "0")
    ensure_autoencoder(ae_cfg, data, cache_dir=tmp_path, output_dir=tmp_path / "rank0")
    waiter.join(timeout=30)
    assert (
        not waiter.is_alive()
        and result["ae"].fingerprint()
        == ensure_autoencoder(ae_cfg, data, cache_dir=tmp_path, output_dir=tmp_path)[0].fingerprint()
    )


def test_ddp_checkpoints_hold_every_ranks_rng_and_a_resume_continues_exactly(tmp_path):
    """Per-rank RNG entries (all-gathered to rank 0's file) and the data position: a DDP run resumed from its
    step-3 checkpoint (the end of epoch 0: 3 batches of 32 per rank) reaches step 6 with the weights of the run
    that was not interrupted."""
    _run([sys.executable, "-m", "latent_flow.encode", *DATA_AE, f"hydra.run.dir={tmp_path / 'enc'}"], tmp_path)
    common = [
        *TINY_TRAIN,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "logger=none",
        "seed=42",
        "callbacks.sample_grid.every_n_steps=0",
    ]
    straight = tmp_path / "straight"
    _run([sys.executable, "-m", "latent_flow.train", *common, f"hydra.run.dir={straight}"], tmp_path)
    step3 = torch.load(straight / "checkpoints" / "step_0000003.ckpt", map_location="cpu", weights_only=True)
    rng = step3["rng_states"]
    assert rng["world_size"] == 2 and sorted(rng["per_rank"]) == [0, 1]
    assert not torch.equal(rng["per_rank"][0]["torch"], rng["per_rank"][1]["torch"])  # seeded 42 and 43
    assert step3["LatentDataModule"]["train_sampler"]["consumed"] == 3 * 32 * 2
    resumed = tmp_path / "resumed"
    _run(
        [
            sys.executable,
            "-m",
            "latent_flow.train",
            *common,
            f"hydra.run.dir={resumed}",
            f"ckpt_path={straight / 'checkpoints' / 'step_0000003.ckpt'}",
        ],
        tmp_path,
    )
    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"DDP resume: weights differ: {different[:5]}"
