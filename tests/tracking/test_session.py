"""A sweep worker opens its study's one parent run: creates it, or attaches to it; a parent in another store
is one line naming the run, the store and the fix."""
import pytest

from tests.helpers.tiny_models import tiny_config
from vlmtrack.tracking.session import SweepStoreError, sweep_parent


def test_a_later_worker_attaches_to_the_studys_parent(store, tiny_paths, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    cfg.train.run_name = "study"
    open_parent = sweep_parent(cfg, experiment="sw")
    first = open_parent(None)
    first.finish("RUNNING")  # the first worker is still at work
    assert store.get_run(first.run_id).info.status == "RUNNING"
    own = store.create_run(first.experiment_id).info.run_id  # the run `mlflow run` made for a later worker
    monkeypatch.setenv("MLFLOW_RUN_ID", own)
    later = open_parent(first.run_id)
    later.finish("FINISHED")
    assert later.run_id == first.run_id and store.get_run(first.run_id).info.status == "FINISHED"
    assert store.get_run(own).data.tags["sweep_parent_run_id"] == first.run_id  # the empty run says where


def test_a_parent_in_another_store_is_one_line_naming_the_fix(store, tiny_paths, tmp_path):
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    with pytest.raises(SweepStoreError, match="0123abcd in another tracking store .* same MLFLOW_TRACKING_URI"):
        sweep_parent(cfg)("0123abcd")
