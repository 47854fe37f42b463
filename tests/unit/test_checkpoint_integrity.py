"""Checkpoints carry their own integrity: a checksum written beside each one at save time (atomically),
checked by every loader, plus a finite-weights check; a damaged file is refused, naming what to use instead."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import xxhash

from latent_flow.api import load_model
from latent_flow.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointIntegrityError,
    checksum_path,
    checksum_paths,
    load_checkpoint,
    load_flow_module,
    newest_intact_checkpoint,
    nonfinite_tensors,
    read_checksum,
    save_checkpoint_file,
)
from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.hashing import file_digest


def _module() -> LatentFlowModule:
    torch.manual_seed(0)
    return LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[4, 8, 8],
        num_classes=3,
        latent_stats={"mean": [0.0] * 4, "std": [1.0] * 4},
        autoencoder={"name": "identity"},
    )


def _checkpoint(model: LatentFlowModule, step: int) -> dict:
    """What Lightning writes for a LatentFlowModule (the parts the loaders read)."""
    return {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
    }


@pytest.fixture(scope="module")
def model() -> LatentFlowModule:
    return _module()


@pytest.fixture
def run_dir(tmp_path, model) -> Path:
    """``checkpoints/`` of a run: step_0000003.ckpt, step_0000006.ckpt and last.ckpt (= step 6), with checksums."""
    folder = tmp_path / "checkpoints"
    for step in (3, 6):
        save_checkpoint_file(_checkpoint(model, step), folder / f"step_{step:07d}.ckpt")
    save_checkpoint_file(_checkpoint(model, 6), folder / "last.ckpt")
    return folder


def _damage(path: Path, *, offset: int | None = None, size: int = 4096, seed: int = 0) -> None:
    """Overwrite ``size`` bytes at ``offset`` (default: the middle, inside the tensor records) with random ones."""
    offset = path.stat().st_size // 2 if offset is None else offset
    noise = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(noise.numpy().tobytes())


def _legacy_save(checkpoint: dict, path: Path) -> None:
    """A checkpoint as saves wrote them before XXH3-128: ``torch.save`` and ``<name>.sha256`` (sha256sum format)."""
    torch.save(checkpoint, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


def test_save_writes_the_checksum_beside_the_file_and_no_temporary_files(run_dir, model):
    last = run_dir / "last.ckpt"
    digest = xxhash.xxh3_128(last.read_bytes()).hexdigest()  # computed independently of the code under test
    assert checksum_path(last) == run_dir / "last.ckpt.xxh128"
    assert checksum_path(last).read_text() == f"{digest}  last.ckpt\n"  # xxh128sum -c format
    assert read_checksum(last) == ("xxh128", digest, checksum_path(last))
    assert file_digest(last) == digest and file_digest(last, "sha256") == hashlib.sha256(last.read_bytes()).hexdigest()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".sha256"))) == []
    loaded = load_flow_module(last, device="cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_random_bytes_at_an_offset_are_refused_by_the_checksum(run_dir):
    last = run_dir / "last.ckpt"
    _damage(last, offset=last.stat().st_size // 2)
    with pytest.raises(CheckpointIntegrityError, match=r"refusing checkpoint .*last\.ckpt: its XXH3-128 .* differs"):
        load_checkpoint(last)
    with pytest.raises(CheckpointIntegrityError, match="damaged or changed after it was saved"):
        load_model(last, device="cpu")  # sample / evaluate / likelihood / edit go through api.load_model


def test_a_truncated_file_is_refused_clearly_with_and_without_a_checksum(run_dir):
    last = run_dir / "last.ckpt"
    with open(last, "r+b") as handle:
        handle.truncate(last.stat().st_size // 3)
    with pytest.raises(CheckpointIntegrityError, match=r"differs .*the file is truncated"):
        load_checkpoint(last)
    checksum_path(last).unlink()  # the same file written before checkpoints carried a checksum
    with pytest.raises(CheckpointIntegrityError, match=r"torch cannot read it \(the file is truncated") as info:
        load_checkpoint(last)
    assert "PytorchStreamReader" not in str(info.value).split("(", 1)[0]  # not torch's raw zip-reader error first


def test_nan_written_without_updating_the_checksum_is_refused_by_the_checksum(run_dir):
    last = run_dir / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("backbone.") and k.endswith("weight"))
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(checkpoint, last)  # re-saved by something else: the checksum file is stale
    with pytest.raises(CheckpointIntegrityError, match=r"XXH3-128 .* differs .*last\.ckpt\.xxh128"):
        load_checkpoint(last)


@pytest.mark.parametrize("prefix", ["backbone.", "ema.module."])
def test_nan_with_a_valid_checksum_is_refused_by_the_finite_check(run_dir, model, prefix):
    checkpoint = _checkpoint(model, 6)
    state = {k: v.clone() for k, v in checkpoint["state_dict"].items()}
    name = next(k for k in state if k.startswith(prefix) and k.endswith("weight"))
    state[name].view(-1)[3] = float("inf") if prefix == "ema.module." else float("nan")
    checkpoint["state_dict"] = state
    save_checkpoint_file(checkpoint, run_dir / "last.ckpt")  # a diverged run saves NaN with a valid checksum
    with pytest.raises(CheckpointIntegrityError, match=rf"1 weight tensor\(s\) hold NaN or Inf \({name}\)"):
        load_flow_module(run_dir / "last.ckpt", device="cpu")


def test_a_legacy_checkpoint_without_a_checksum_loads_with_a_warning(run_dir, model, caplog):
    legacy = run_dir / "legacy.ckpt"
    torch.save(_checkpoint(model, 6), legacy)  # as Lightning wrote them before this change
    with caplog.at_level(logging.WARNING, logger="latent_flow.training.checkpoints"):
        loaded = load_flow_module(legacy, device="cpu")
    assert "has no checksum file (legacy.ckpt.xxh128)" in caplog.text
    assert torch.equal(loaded.state_dict()["ema.num_updates"], model.state_dict()["ema.num_updates"])


def test_a_damaged_legacy_checkpoint_is_refused_by_its_zip_crc32(run_dir, model):
    legacy = run_dir / "legacy.ckpt"
    torch.save(_checkpoint(model, 6), legacy)
    _damage(legacy)
    with pytest.raises(CheckpointIntegrityError, match=r"the CRC-32 of its record .* does not match"):
        load_checkpoint(legacy)


def test_the_recovery_hint_names_the_newest_intact_step_checkpoint(run_dir, model):
    _damage(run_dir / "last.ckpt")
    _damage(run_dir / "step_0000006.ckpt")  # the newest step checkpoint is damaged too: the hint skips it
    step3 = run_dir / "step_0000003.ckpt"
    with pytest.raises(CheckpointIntegrityError) as info:
        load_checkpoint(run_dir / "last.ckpt")
    message = str(info.value)
    assert f"The newest intact checkpoint in the same folder is {step3} (step 3, checksum verified)" in message
    assert f"use ckpt_path={step3} instead" in message
    assert newest_intact_checkpoint(run_dir) == step3
    again = run_dir / "step_0000003-v1.ckpt"  # Lightning's name for step 3 written again by a resumed run
    save_checkpoint_file(_checkpoint(model, 3), again)
    assert newest_intact_checkpoint(run_dir) == again
    _damage(step3)
    _damage(again)
    with pytest.raises(CheckpointIntegrityError, match=r"There is no intact step_\*\.ckpt in .*: restore last\.ckpt"):
        load_checkpoint(run_dir / "last.ckpt")


def test_the_recovery_hint_for_interrupted_ckpt_and_a_legacy_step_checkpoint(run_dir, model):
    interrupted = run_dir / "interrupted.ckpt"
    save_checkpoint_file(_checkpoint(model, 7), interrupted)
    with open(interrupted, "r+b") as handle:
        handle.truncate(1000)
    for step in (3, 6):
        checksum_path(run_dir / f"step_{step:07d}.ckpt").unlink()  # written before checksums: CRC-32 checked
    with pytest.raises(CheckpointIntegrityError) as info:
        load_checkpoint(interrupted)
    assert f"is {run_dir / 'step_0000006.ckpt'} (step 6, no checksum file; its zip CRC-32s verified)" in str(info.value)


def test_a_save_interrupted_between_its_two_renames_is_accepted(run_dir, model):
    """A crash after the checkpoint's rename but before its checksum's: the flushed pending checksum vouches."""
    last = run_dir / "last.ckpt"
    side = checksum_path(last)
    old = side.read_text()
    save_checkpoint_file(_checkpoint(model, 9), last)
    shutil.copy(side, side.with_name(side.name + ".tmp"))  # the new checksum, still pending
    side.write_text(old)  # the old checksum file, not yet replaced
    assert load_checkpoint(last)["global_step"] == 9
    os.remove(side.with_name(side.name + ".tmp"))
    with pytest.raises(CheckpointIntegrityError, match="differs"):
        load_checkpoint(last)


def test_a_damaged_checksum_file_is_refused(run_dir):
    checksum_path(run_dir / "last.ckpt").write_text("not a checksum\n")
    with pytest.raises(CheckpointIntegrityError, match=r"checksum file .* is damaged \(no XXH3-128 in it"):
        load_checkpoint(run_dir / "last.ckpt")
    checksum_path(run_dir / "last.ckpt").write_text(f"{'0' * 64}  last.ckpt\n")  # a SHA-256 under the XXH3 name
    with pytest.raises(CheckpointIntegrityError, match=r"no XXH3-128 in it"):
        load_checkpoint(run_dir / "last.ckpt")


def test_a_single_changed_byte_is_refused(run_dir):
    last = run_dir / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit of one byte
    last.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointIntegrityError, match=r"its XXH3-128 .* differs from the one recorded in last\.ckpt\.xxh128"
    ):
        load_checkpoint(last)


def test_a_checkpoint_with_an_old_sha256_checksum_is_still_verified(run_dir, model, caplog):
    """Checkpoints saved before XXH3-128 carry ``<name>.sha256``: intact they load (no warning), damaged or
    truncated they are refused by their SHA-256, and a new save over one replaces its checksum."""
    old = run_dir / "old.ckpt"
    _legacy_save(_checkpoint(model, 4), old)
    assert read_checksum(old).algorithm == "sha256" and not checksum_path(old).exists()
    with caplog.at_level(logging.WARNING, logger="latent_flow.utils.checkpoint_files"):
        assert load_checkpoint(old)["global_step"] == 4
    assert "no checksum file" not in caplog.text
    intact = old.read_bytes()
    _damage(old)
    with pytest.raises(CheckpointIntegrityError, match=r"old\.ckpt: its SHA-256 .* differs .* in old\.ckpt\.sha256"):
        load_checkpoint(old)
    old.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(CheckpointIntegrityError, match=r"its SHA-256 .* differs .*the file is truncated"):
        load_checkpoint(old)
    save_checkpoint_file(_checkpoint(model, 5), old)  # saved again: the XXH3-128 replaces the SHA-256
    assert [p.name for p in checksum_paths(old) if p.exists()] == ["old.ckpt.xxh128"]
    assert load_checkpoint(old)["global_step"] == 5


def test_the_first_save_over_an_old_checkpoint_interrupted_between_its_renames_is_accepted(run_dir, model):
    """The new file and the old ``.sha256`` are left with the pending ``.xxh128.tmp``; an old version of
    this code saving over a file with a ``.xxh128`` leaves a stale ``.xxh128`` beside a matching ``.sha256``."""
    last = run_dir / "last.ckpt"
    checksum_path(last).unlink()
    _legacy_save(_checkpoint(model, 6), last)
    save_checkpoint_file(_checkpoint(model, 9), run_dir / "new.ckpt")
    shutil.copy(run_dir / "new.ckpt", last)
    pending = run_dir / "last.ckpt.xxh128.tmp"
    pending.write_text((run_dir / "new.ckpt.xxh128").read_text())
    assert load_checkpoint(last)["global_step"] == 9
    pending.unlink()
    with pytest.raises(CheckpointIntegrityError, match=r"SHA-256 .* differs"):
        load_checkpoint(last)
    _legacy_save(_checkpoint(model, 10), last)  # the .sha256 matches, the .xxh128 beside it is stale
    shutil.copy(run_dir / "new.ckpt.xxh128", checksum_path(last))
    assert load_checkpoint(last)["global_step"] == 10


@pytest.mark.parametrize("size", [0, 1, 100_003, (64 << 20) + 5])  # empty (not mapped), small, over one chunk
def test_file_digest_equals_the_hash_of_the_bytes(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f") == xxhash.xxh3_128(data).hexdigest()
    assert file_digest(tmp_path / "f", "sha256") == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(shutil.which("xxh128sum") is None, reason="xxh128sum (xxhash package) not installed")
def test_the_checksum_file_checks_with_xxh128sum(run_dir):
    subprocess.run(["xxh128sum", "-c", "last.ckpt.xxh128"], cwd=run_dir, check=True, capture_output=True)
    _damage(run_dir / "last.ckpt")
    assert subprocess.run(["xxh128sum", "-c", "last.ckpt.xxh128"], cwd=run_dir, capture_output=True).returncode != 0


def test_lightning_checkpoint_io_saves_with_a_checksum_holds_a_verified_resume_and_removes_both(run_dir, model):
    io = AtomicCheckpointIO()
    path = run_dir / "interrupted.ckpt"
    io.save_checkpoint(_checkpoint(model, 5), path)
    assert load_checkpoint(path)["global_step"] == 5 and checksum_path(path).is_file()
    held = {"global_step": 123}
    io.hold(path, held)
    assert io.load_checkpoint(path) is held  # a resume verified before the stages is not read again
    assert io.load_checkpoint(path)["global_step"] == 5  # held once; later loads read and verify the file
    _damage(path)
    with pytest.raises(CheckpointIntegrityError):
        io.load_checkpoint(path)
    path.with_name(path.name + ".sha256").write_text("left by an old save\n")
    io.remove_checkpoint(path)
    assert not path.exists() and not any(side.exists() for side in checksum_paths(path))


def test_the_finite_check_is_exact_when_the_fast_sum_overflows_or_cancels():
    big = torch.full((8,), 3e38)  # finite, but its float32 sum overflows: the element-wise test decides
    both = torch.tensor([float("inf"), float("-inf"), 1.0])  # the sum is NaN
    half = torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)
    weights = {"big": big, "both": both, "half": half, "int": torch.tensor([1, 2]), "nested": [{"ok": torch.ones(3)}]}
    assert nonfinite_tensors(weights) == ["both", "half"]
