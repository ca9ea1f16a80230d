"""train.keep_checkpoints: which checkpoints go (a pure choice), and a 200-save run on the tiny models
against a real MLflow store: every save's golden captions in MLflow, at most N+1 checkpoints on disk and
in MLflow, and a run killed mid-way resumes from its newest kept checkpoint to the uninterrupted loss."""
import pytest

from tests.helpers.tiny_models import tiny_config
from tests.train.test_distributed import dies_after
from vlmtrack.data.golden import GOLDEN_HISTORY_DIR
from vlmtrack.model.connector_io import CHECKPOINTS, latest_checkpoint
from vlmtrack.tracking.artifacts import CHECKPOINT_TAG
from vlmtrack.tracking.base import finishing
from vlmtrack.tracking.mlflow_tracker import MlflowTracker
from vlmtrack.tracking.report import load_table
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train import loop


def evals(**loss_at):
    return [{"step": int(k[1:]), "eval_loss": v} for k, v in loss_at.items()]


def test_the_newest_and_the_best_evaluated_are_kept():
    written = [10, 20, 30, 40, 50]
    assert ckpt.checkpoints_to_drop(written, [], 2) == [10, 20, 30]
    assert ckpt.checkpoints_to_drop(written, evals(s20=1.5, s40=1.7, s50=1.6), 2) == [10, 30]
    assert ckpt.checkpoints_to_drop(written, evals(s50=1.0), 2) == [10, 20, 30]  # the best is among the newest
    assert ckpt.checkpoints_to_drop(written, evals(s20=1.0, s30=1.0), 1) == [10, 20, 40]  # the newer of equals
    assert ckpt.checkpoints_to_drop(written, evals(s5=0.1), 2) == [10, 20, 30]  # not one this run wrote
    assert ckpt.checkpoints_to_drop(written, evals(s20=1.0), 0) == []  # 0 keeps all
    assert ckpt.best_checkpoint(written, evals(s20=1.5, s40=1.2)) == (40, 1.2)


SAVES, KILL_AT, KEEP = 210, 100, 2


def run_cfg(tiny_paths, out):
    cfg = tiny_config(tiny_paths, out, train_steps=SAVES, save_every=1, log_every=10, quick_eval_steps=0,
                      keep_checkpoints=KEEP, full_eval_every="30")
    cfg.data.num_workers = 0
    return cfg


def golden_steps(client, run_id) -> list[int]:
    tables = [f.path for f in client.list_artifacts(run_id, GOLDEN_HISTORY_DIR)]
    return [r["step"] for path in tables for r in load_table(client, run_id, path)]


def checkpoints_in_mlflow(client, run_ids) -> list[str]:
    """The runs' live checkpoint models, as `checkpoints/step_N` (none is also a run artifact)."""
    assert not [f for r in run_ids for f in client.list_artifacts(r, CHECKPOINTS)]
    exp = client.get_run(run_ids[0]).info.experiment_id
    return [m.tags[CHECKPOINT_TAG] for r in run_ids
            for m in client.search_logged_models([exp], filter_string=f"source_run_id='{r}'")]


@pytest.mark.slow
def test_200_saves_keep_every_caption_and_a_bounded_set_of_checkpoints(tiny_paths, tmp_path, monkeypatch, store):
    client, log = store, lambda *_: None
    full = MlflowTracker(experiment="long", run_name="full")
    with finishing(full):
        whole = loop.train(run_cfg(tiny_paths, tmp_path / "full"), full, log=log)
    steps = golden_steps(client, full.run_id)
    assert sorted(steps) == [s for s in range(1, SAVES + 1) for _ in range(6)]  # 210 saves x 6 captions
    on_disk = sorted(p.name for p in (tmp_path / "full" / CHECKPOINTS).iterdir())
    assert len(on_disk) <= KEEP + 1 and f"step_{SAVES}" in on_disk
    assert sorted(p.rsplit("/", 1)[1] for p in checkpoints_in_mlflow(client, [full.run_id])) == on_disk

    real_save = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", dies_after(KILL_AT, KeyboardInterrupt))
    cfg, first = run_cfg(tiny_paths, tmp_path / "killed"), MlflowTracker(experiment="long", run_name="killed")
    with pytest.raises(KeyboardInterrupt), finishing(first):
        loop.train(cfg, first, log=log)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert latest_checkpoint(cfg.output_dir).name == f"step_{KILL_AT}"
    cfg.train.resume_from = "latest"
    second = MlflowTracker(experiment="long", run_name="resumed")
    with finishing(second):
        resumed = loop.train(cfg, second, log=log)
    assert resumed["final_eval"]["eval_loss"] == pytest.approx(whole["final_eval"]["eval_loss"], abs=1e-6)
    assert client.get_run(first.run_id).info.status == "KILLED"
    # the resumed training removed the killed attempt's checkpoints from its run too, as they aged
    in_mlflow = checkpoints_in_mlflow(client, [first.run_id, second.run_id])
    assert len(in_mlflow) <= KEEP + 1 and f"{CHECKPOINTS}/step_{SAVES}" in in_mlflow
    assert len(list((tmp_path / "killed" / CHECKPOINTS).iterdir())) <= KEEP + 1
    both = golden_steps(client, first.run_id) + golden_steps(client, second.run_id)
    assert sorted(set(both)) == list(range(1, SAVES + 1))  # every save's captions, across the two attempts


def test_timings_travel_in_checkpoints_as_tensors_and_come_back_as_lists(tmp_path):
    """A value per step for the whole run: packed as float32 (4 bytes a step, where the pickled floats took
    ~9); read back, the loop gets its lists (from a checkpoint written before the packing too)."""
    import torch

    from vlmtrack.train import checkpoint as ckpt

    timing = {"step_s": [0.01 * (i % 97) for i in range(556_000)], "data_wait_s": [0.0] * 556_000,
              "full_eval_s": [5.25], "golden_s": []}
    torch.save({"timing": ckpt.packed_timing(timing)}, tmp_path / "trainer_state.pt")
    assert (tmp_path / "trainer_state.pt").stat().st_size < 2 * 556_000 * 4 + 100_000
    back = ckpt.load_trainer_state(tmp_path)["timing"]
    assert set(back) == set(timing) and all(isinstance(v, list) for v in back.values())
    assert back["full_eval_s"] == [5.25] and back["golden_s"] == []
    assert max(abs(a - b) for a, b in zip(back["step_s"], timing["step_s"])) < 1e-6
    torch.save({"timing": timing}, tmp_path / "trainer_state.pt")  # written before the packing
    assert ckpt.load_trainer_state(tmp_path)["timing"] == timing
