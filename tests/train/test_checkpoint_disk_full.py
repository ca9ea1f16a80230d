"""The disk fills up while a checkpoint is written: the previous checkpoint survives byte for byte and
loads, nothing half-written is left (under the final name or the temp one), and the error is one
message naming the checkpoint, the cause and the fix."""
import errno
import gc
import hashlib
import io
import subprocess
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save as safetensors_bytes

from tests.helpers.tiny_models import tiny_config
from vlmtrack.model.connector import Connector
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train import loop

TOWERS = {"llm": "tiny-llm", "vision": "tiny-vision"}
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")
# What the libraries raise on a full disk (measured on a 64 KiB tmpfs with safetensors 0.8, torch 2.13)
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def trained(width=16):
    torch.manual_seed(0)
    conn = Connector(8, width, num_latents=4, depth=1, heads=2, ffn_mult=2)
    opt = torch.optim.AdamW(conn.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    conn(torch.randn(2, 3, 8)).sum().backward()
    opt.step()
    sched.step()
    return conn, opt, sched


def save(out, step, parts):
    return ckpt.save_checkpoint(out, step, *parts, {"step": step, "evals": [], "timing": {}}, TOWERS)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_previous_intact(out, before, conn):
    ckdir = out / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["step_4"]  # no step_8, no .step_8.tmp
    assert digest(ckdir / "step_4") == before
    assert ckpt.latest_checkpoint(out) == ckdir / "step_4"
    weights, meta = ckpt.load_connector_weights(ckdir / "step_4")
    assert all(torch.equal(weights[k], v) for k, v in conn.state_dict().items()) and meta["step"] == 4
    assert ckpt.load_trainer_state(ckdir / "step_4")["step"] == 4


def assert_clear_message(err, out):
    msg = str(err.value)
    assert msg.startswith(f"cannot write checkpoint {out / 'checkpoints' / 'step_8'} (")
    assert "no space left on the device" in msg and "Free space there or set train.output_dir" in msg
    assert f"the previous checkpoint {out / 'checkpoints' / 'step_4'} is intact" in msg
    assert err.value.errno == errno.ENOSPC and "\n" not in msg


def half_then(exc):
    """A writer that puts half of the real bytes on disk, then fails as a full disk does."""
    def write(path, data: bytes):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise exc
    return write


def fail_in(monkeypatch, writer, exc):
    write = half_then(exc)
    if writer == "connector.safetensors":
        monkeypatch.setattr(ckpt, "save_file", lambda t, path, metadata=None: write(path, safetensors_bytes(t, metadata)))
    elif writer == "connector.json":
        monkeypatch.setattr(ckpt.Path, "write_text", lambda self, text: write(self, text.encode()))
    else:
        def torch_save(obj, path):
            buf = io.BytesIO()
            torch.serialization.save(obj, buf)
            write(path, buf.getvalue())
        monkeypatch.setattr(ckpt.torch, "save", torch_save)


@pytest.mark.parametrize("writer", ["connector.safetensors", "connector.json", "trainer_state.pt"])
def test_disk_full_in_any_writer_keeps_the_previous_checkpoint(tmp_path, monkeypatch, writer):
    parts = trained()
    save(tmp_path, 4, parts)
    before = digest(tmp_path / "checkpoints" / "step_4")
    fail_in(monkeypatch, writer, NO_SPACE)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        save(tmp_path, 8, parts)
    assert f"({writer})" in str(err.value)
    assert_clear_message(err, tmp_path)
    assert_previous_intact(tmp_path, before, parts[0])


@pytest.mark.parametrize("writer, error, free", [
    ("connector.safetensors", SafetensorError(SAFETENSORS_FULL), 10 * 2**30),
    ("trainer_state.pt", RuntimeError(TORCH_FULL), 0),  # torch names no cause: the disk itself is asked
])
def test_what_the_libraries_raise_on_a_full_disk_is_recognised(tmp_path, monkeypatch, writer, error, free):
    parts = trained()
    save(tmp_path, 4, parts)
    before = digest(tmp_path / "checkpoints" / "step_4")
    fail_in(monkeypatch, writer, error)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: SimpleNamespace(free=free))
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        save(tmp_path, 8, parts)
    assert_clear_message(err, tmp_path)
    assert err.value.__cause__ is error
    assert_previous_intact(tmp_path, before, parts[0])


def test_an_error_that_is_not_the_disk_is_not_called_one(tmp_path, monkeypatch):
    parts = trained()
    save(tmp_path, 4, parts)
    before = digest(tmp_path / "checkpoints" / "step_4")
    fail_in(monkeypatch, "trainer_state.pt", RuntimeError("cannot pickle 'generator' object"))
    with pytest.raises(RuntimeError, match="cannot pickle") as err:  # plenty of space: the bug itself
        save(tmp_path, 8, parts)
    assert not isinstance(err.value, ckpt.CheckpointWriteError)
    assert_previous_intact(tmp_path, before, parts[0])


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs (mounting needs root, as in CI): more than FULL_BELOW_BYTES free until filled."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # torch's failed writer keeps its file open until the exception's frames are freed
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "--lazy", str(mnt)], check=True)


@pytest.mark.parametrize("room", ["none", "weights and json only"])
def test_a_really_full_disk(small_disk, room):
    parts = trained(width=64)
    save(small_disk, 4, parts)
    step4 = small_disk / "checkpoints" / "step_4"
    before = digest(step4)
    sizes = {p.name: p.stat().st_size for p in step4.iterdir()}
    page = 4096
    leave = 0 if room == "none" else (
        -(-sizes["connector.safetensors"] // page) * page + page + sizes["trainer_state.pt"] // 2 // page * page)
    free = ckpt.shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - leave))
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        save(small_disk, 8, parts)
    writer = "connector.safetensors" if room == "none" else "trainer_state.pt"
    assert f"({writer})" in str(err.value)  # the safetensors error names ENOSPC; torch's does not
    assert_clear_message(err, small_disk)
    assert_previous_intact(small_disk, before, parts[0])


def test_through_the_training_loop(tiny_paths, tmp_path, monkeypatch):
    real = ckpt.save_file

    def full_at_step_8(tensors, path, metadata=None):
        if "step_8" in path:
            half_then(NO_SPACE)(path, safetensors_bytes(tensors, metadata))
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", full_at_step_8)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_paths, out, quick_eval_steps=0, run_golden_every="never")
    cfg.eval.run_ablations = False
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    assert_clear_message(err, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4"]
    weights, meta = ckpt.load_connector_weights(out / "checkpoints" / "step_4")
    assert meta["step"] == 4 and all(torch.isfinite(w).all() for w in weights.values())
    assert ckpt.load_trainer_state(out / "checkpoints" / "step_4")["step"] == 4
