"""data.feature_cache_build=during: the first steps train on the live tower while the cache is built on a
thread; once it is complete the loader restarts at the next batch and reads cached features."""
import threading
import time

import pytest

from tests.helpers.tiny_models import tiny_config
from vlmtrack.config import load_config
from vlmtrack.model import feature_cache
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop, setup
from vlmtrack.train import step as step_module


def recorded_run(cfg, monkeypatch, release_at: int | None):
    """Trains cfg, recording each batch's sample ids and vision input; with `release_at`, the cache's
    build waits until that many batches were drawn, and the run then waits for the build to finish."""
    gate, drawn, logs = threading.Event(), [], []
    real_build, real_next = feature_cache.open_or_build, step_module.TrainBatches.next

    def gated_build(*args, **kwargs):
        assert gate.wait(60), "the test never released the build"
        return real_build(*args, **kwargs)

    def recording_next(self, step):
        b, tokens = real_next(self, step)
        drawn.append((list(b.ids), "features" if b.features is not None else "pixels"))
        if len(drawn) == release_at:
            gate.set()
            while self.run.cache_build is not None and not self.run.cache_build.done():
                time.sleep(0.01)
        return b, tokens

    monkeypatch.setattr(feature_cache, "open_or_build", gated_build)
    monkeypatch.setattr(step_module.TrainBatches, "next", recording_next)
    if release_at is None:
        gate.set()
    outcome = loop.train(cfg, JsonlTracker(), log=logs.append)
    monkeypatch.undo()
    return outcome, drawn, logs


def test_the_run_switches_to_the_cache_at_the_next_batch_and_draws_the_same_samples(tiny_paths, tmp_path,
                                                                                    monkeypatch):
    during = tiny_config(tiny_paths, tmp_path / "during")
    during.data.feature_cache_dir, during.data.feature_cache_build = str(tmp_path / "cache-a"), "during"
    before = tiny_config(tiny_paths, tmp_path / "before")
    before.data.feature_cache_dir, before.data.feature_cache_build = str(tmp_path / "cache-b"), "before"
    a, drawn_during, logs = recorded_run(during, monkeypatch, release_at=3)
    b, drawn_before, _ = recorded_run(before, monkeypatch, release_at=None)
    assert [kind for _, kind in drawn_during] == ["pixels"] * 3 + ["features"] * 5
    assert [kind for _, kind in drawn_before] == ["features"] * 8
    assert [ids for ids, _ in drawn_during] == [ids for ids, _ in drawn_before]  # none lost, none twice
    assert any("built on a thread while the first steps train" in line for line in logs)
    assert any("the feature cache is complete: cached features from step 3 on" in line for line in logs)
    # the first three steps saw fp32 live features instead of their bf16 copies: close, not equal
    assert a["final_eval"]["eval_loss"] == pytest.approx(b["final_eval"]["eval_loss"], rel=2e-2)
    assert a["final_eval"]["eval_label_tokens_total"] == b["final_eval"]["eval_label_tokens_total"]


def test_a_run_that_ends_first_stops_the_build_and_trains_live_throughout(tiny_paths, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    cfg.data.feature_cache_dir, cfg.data.feature_cache_build = str(tmp_path / "cache"), "during"
    threads = threading.active_count()
    outcome, drawn, logs = recorded_run(cfg, monkeypatch, release_at=99)  # never released by a batch
    assert [kind for _, kind in drawn] == ["pixels"] * 8
    assert outcome["final_eval"]["eval_loss"] > 0
    assert threading.active_count() == threads  # the build's thread ended with the run


def test_auto_builds_during_training_only_on_one_cuda_device_without_compile(monkeypatch):
    import torch

    cfg = load_config(None, [])
    assert not setup.cache_built_during_training(cfg, torch.device("cpu"), 4, False)
    assert setup.cache_built_during_training(cfg, torch.device("cuda"), 4, True)
    monkeypatch.setattr(setup.dist, "world_size", lambda: 2)  # torchrun: rank 0 builds first, the others wait
    assert not setup.cache_built_during_training(cfg, torch.device("cuda"), 4, True)
    cfg.data.feature_cache_build = "during"
    assert not setup.cache_built_during_training(cfg, torch.device("cuda"), 4, True)
    cfg.data.feature_cache_build = "auto"
    monkeypatch.undo()
    assert not setup.cache_built_during_training(cfg, torch.device("cuda"), 256, False)  # may compile
    cfg.train.compile = "off"
    assert setup.cache_built_during_training(cfg, torch.device("cuda"), 256, False)
    cfg.data.feature_cache_build = "before"
    assert not setup.cache_built_during_training(cfg, torch.device("cuda"), 4, True)
    cfg.data.feature_cache_build = "during"
    assert setup.cache_built_during_training(cfg, torch.device("cpu"), 4, False)


def test_a_build_that_fails_leaves_the_run_on_the_live_tower_saying_why(tiny_paths, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    cfg.data.feature_cache_dir, cfg.data.feature_cache_build = str(tmp_path / "cache"), "during"

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feature_cache, "open_or_build", broken)
    logs = []
    outcome = loop.train(cfg, JsonlTracker(), log=logs.append)
    assert outcome["final_eval"]["eval_loss"] > 0 and outcome["step"] == 8
    assert any("the feature cache's build ended early (OSError: [Errno 28] No space left on device): the run "
               "goes on with the live tower" in line for line in logs)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_step_is_captured_and_replayed_while_the_build_runs(tiny_paths, tmp_path, monkeypatch):
    """The build's tower runs on its own thread and stream while the main thread captures the graph step
    (thread_local capture mode): no capture fails, and the run switches to the cache once it is built."""
    cfg = tiny_config(tiny_paths, tmp_path / "out", train_steps=40, save_every=40)
    cfg.data.feature_cache_dir, cfg.data.feature_cache_build = str(tmp_path / "cache"), "during"
    cfg.train.cuda_graphs = "on"
    real_build = feature_cache.open_or_build

    def one_image_a_batch(folder, image_root, relpaths, backbone, device, batch_size, *args, **kwargs):
        return real_build(folder, image_root, relpaths, backbone, device, 1, *args, **kwargs)  # a long build

    monkeypatch.setattr(feature_cache, "open_or_build", one_image_a_batch)
    logs = []
    outcome = loop.train(cfg, JsonlTracker(), log=logs.append)
    assert outcome["step"] == 40 and outcome["final_eval"]["eval_loss"] > 0
    assert any("[graphs] captured the step" in line for line in logs)
    assert not any("capture failed" in line for line in logs), [line for line in logs if "[graphs]" in line]
    assert any("image(s) cached in" in line or "build stopped with" in line for line in logs)
