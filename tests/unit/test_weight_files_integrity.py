"""Every weights file the framework writes besides flow checkpoints (autoencoder files, latent attribute
classifiers, cached oracles) is written atomically with its checksum (XXH3-128) beside it and refused when damaged,
truncated or non-finite, through the same loader as flow checkpoints (``utils/checkpoint_files.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latent_flow.autoencoders.base import load_autoencoder, save_autoencoder
from latent_flow.autoencoders.kl import KLAutoencoder
from latent_flow.compositional.classifier import AttributeSpec, LatentAttributeClassifier, load_classifier
from latent_flow.evaluation import oracle as oracle_mod
from latent_flow.utils.checkpoint_files import (
    CheckpointIntegrityError,
    checksum_path,
    load_checkpoint,
    save_checkpoint_file,
)


def _flip_bytes(path: Path, offset_fraction: float = 0.6, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _small_kl() -> KLAutoencoder:
    torch.manual_seed(0)
    return KLAutoencoder(in_channels=3, latent_channels=4, base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1)


def _classifier() -> LatentAttributeClassifier:
    torch.manual_seed(0)
    specs = [AttributeSpec("shape", values=["circle", "square"]), AttributeSpec("hue", kind="continuous", sigma=0.5)]
    return LatentAttributeClassifier((2, 4, 4), specs, width=8, depth=1, time_dim=16)


def test_autoencoder_file_carries_a_checksum_and_damage_is_refused(tmp_path):
    path = save_autoencoder(_small_kl(), tmp_path / "ae.pt")
    assert checksum_path(path).is_file()
    assert not list(tmp_path.glob("*.tmp"))  # the temporary files were renamed into place
    load_autoencoder("kl", ckpt_path=path)  # intact: loads
    _flip_bytes(path)
    with pytest.raises(CheckpointIntegrityError, match=r"ae\.pt.*XXH3-128 .* differs"):
        load_autoencoder("kl", ckpt_path=path)


def test_truncated_autoencoder_file_is_named_truncated(tmp_path):
    path = save_autoencoder(_small_kl(), tmp_path / "ae.pt")
    checksum_path(path).unlink()  # a file from before checksums: the loader still reads the zip structure
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointIntegrityError, match="truncated"):
        load_autoencoder("kl", ckpt_path=path)


def test_autoencoder_file_with_nan_weights_is_refused(tmp_path):
    ae = _small_kl()
    with torch.no_grad():
        next(ae.parameters()).view(-1)[3] = float("nan")
    path = save_autoencoder(ae, tmp_path / "ae.pt")  # checksum matches: the damage happened before the save
    with pytest.raises(CheckpointIntegrityError, match="NaN or Inf"):
        load_autoencoder("kl", ckpt_path=path)


def test_classifier_file_round_trip_and_damage(tmp_path):
    clf = _classifier()
    path = clf.save(tmp_path / "classifier.pt", meta={"note": "x"})
    assert checksum_path(path).is_file()
    loaded, meta = load_classifier(path)
    assert meta == {"note": "x"}
    for (k, a), (_, b) in zip(clf.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    _flip_bytes(path)
    with pytest.raises(CheckpointIntegrityError, match=r"classifier\.pt"):
        load_classifier(path)


def test_cached_oracle_is_written_with_a_checksum_and_refused_when_damaged(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tiny = oracle_mod.ShapesOracle(resolution=32)

    def fake_train(resolution, cfg):  # the cache logic, not the training, is under test
        tiny.train_seconds = 0.0
        return tiny

    monkeypatch.setattr(oracle_mod, "_train", fake_train)
    monkeypatch.setattr(oracle_mod, "evaluate_oracle", lambda oracle, data: {"accuracy": {}})
    cfg = {"steps": 1, "batch_size": 2, "num_train": 4, "num_eval": 2}
    oracle_mod.load_or_train_oracle(tmp_path, resolution=32, **cfg)
    (weights,) = (tmp_path / "oracles").glob("shapes-*.pt")
    assert checksum_path(weights).is_file()
    oracle_mod.load_or_train_oracle(tmp_path, resolution=32, **cfg)  # intact: loaded from the cache
    _flip_bytes(weights)
    with pytest.raises(CheckpointIntegrityError, match="shapes-"):
        oracle_mod.load_or_train_oracle(tmp_path, resolution=32, **cfg)


def test_packaged_oracle_loads_without_a_checksum_file_warning(caplog):
    with caplog.at_level("WARNING"):
        oracle_mod.load_packaged_oracle(next(iter(oracle_mod.PACKAGED_ORACLES)))
    assert not [r for r in caplog.records if "no checksum file" in r.getMessage()]


def test_verified_flag_skips_only_the_checksum_step(tmp_path):
    path = tmp_path / "w.pt"
    save_checkpoint_file({"state_dict": {"w": torch.tensor([1.0, float("inf")])}}, path)
    checksum_path(path).unlink()
    with pytest.raises(CheckpointIntegrityError, match="NaN or Inf"):  # the finite check still runs
        load_checkpoint(path, weights_only=True, verified=True)
