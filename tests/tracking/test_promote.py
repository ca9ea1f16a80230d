"""`vlmtrack promote`: a run's best kept checkpoint, or the checkpoint given, becomes a new version of a
registered captioning model and the alias moves to it; nothing is deleted. Tiny models, one tracked run."""
import io
import json
import shutil

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from tests.helpers.tiny_models import tiny_config
from vlmtrack import cli
from vlmtrack.config import dump_yaml
from vlmtrack.model.backbone import ModelLoadError
from vlmtrack.tracking import promote as P


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained_store(tiny_paths, tmp_path_factory):
    """One tiny training run with full evals at steps 4 and 8, both checkpoints kept, in a store of its own."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("promote")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        cfg = tiny_config(tiny_paths, tmp / "out", train_steps=8, save_every=4, quick_eval_steps=0,
                          full_eval_every="4", keep_checkpoints=0)
        cfg.data.num_workers = 0
        dump_yaml(cfg, tmp / "cfg.yaml")
        assert cli.main(["train", "--config", str(tmp / "cfg.yaml"), "--experiment", "promo"]) == 0
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("promo").experiment_id])
        yield {"uri": uri, "run": run, "out": tmp / "out", "client": client}


@pytest.fixture
def trained(trained_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_store["uri"])
    mlflow.set_tracking_uri(trained_store["uri"])
    return trained_store["run"], trained_store["out"]


@pytest.fixture
def client(trained_store):
    return trained_store["client"]


def test_promote_twice_moves_the_alias_and_keeps_both_versions(trained, client, capsys):
    run, _ = trained
    rid = run.info.run_id
    losses = {m.step: m.value for m in client.get_metric_history(rid, "eval_loss")}
    best = min(losses, key=lambda s: (losses[s], -s))
    assert cli.main(["promote", rid, "--name", "captioner-demo"]) == 0
    assert "captioner-demo@champion -> version 1" in capsys.readouterr().out
    first = client.get_model_version_by_alias("captioner-demo", "champion")
    assert str(first.version) == "1" and first.run_id == rid
    assert first.tags["checkpoint"] == f"runs:/{rid}/checkpoints/step_{best}" and first.tags["step"] == str(best)
    assert float(first.tags["eval_loss"]) == pytest.approx(losses[best])
    assert (first.tags["lr"], first.tags["vision_ln"]) == ("0.001", "False")
    assert first.tags["split_hash"] == run.data.tags["split_hash"]
    assert first.tags["golden_hash"] == run.data.tags["golden_hash"]
    assert float(first.tags["score"]) == pytest.approx(run.data.metrics["score"])
    assert "best full-eval loss" in first.tags["selected"]

    other = 4 if best == 8 else 8
    assert cli.main(["promote", f"runs:/{rid}/checkpoints/step_{other}", "--name", "captioner-demo"]) == 0
    second = client.get_model_version_by_alias("captioner-demo", "champion")
    assert str(second.version) == "2" and second.tags["step"] == str(other)
    assert float(second.tags["eval_loss"]) == pytest.approx(losses[other])
    assert sorted(str(v.version) for v in client.search_model_versions("name='captioner-demo'")) == ["1", "2"]
    assert {k: str(v) for k, v in client.get_registered_model("captioner-demo").aliases.items()} == {"champion": "2"}
    # the versions are logged models of the run, each with its own copy of the connector, beside the run's
    # checkpoints (logged models of their own type)
    from vlmtrack.tracking.artifacts import MODEL_TYPE

    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id='{rid}'", output_format="list")
    promoted = [m for m in logged if m.model_type != MODEL_TYPE]
    assert len(promoted) == 2 and {m.status.to_proto() for m in promoted} == {2}  # READY
    assert sorted(m.name for m in logged if m.model_type == MODEL_TYPE) == ["step_4", "step_8"]

    for version in ("1", "2"):  # the version the alias left still loads and captions
        model = mlflow.pyfunc.load_model(f"models:/captioner-demo/{version}", model_config={"device": "cpu"})
        out = model.predict(pd.DataFrame({"image": [png("red"), png("blue")]}), params={"max_new_tokens": 3})
        assert list(out.columns) == ["caption"] and len(out) == 2
    with pytest.raises(MlflowException, match=r"image 1: not a decodable image \(9 bytes"):
        model.predict(pd.DataFrame({"image": [png("red"), b"not a png"]}))


def test_a_tower_that_cannot_be_found_is_named_with_the_fix(trained, tmp_path, monkeypatch):
    """A tower over the bundling limit is recorded by its path; where that path is missing the model says which
    tower, where it looked and what to do. A local checkpoint folder finds its run through its output dir."""
    _, out = trained
    towers = tmp_path / "towers"
    shutil.copytree(json.loads((out / "checkpoints/step_8/connector.json").read_text())["vision"], towers / "vision")
    meta_path = out / "checkpoints/step_8/connector.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "vision": str(towers / "vision")}))
    monkeypatch.setattr(P, "BUNDLE_TOWER_MAX_BYTES", 0)
    promoted = P.promote(str(out / "checkpoints/step_8"), "big-towers", log=lambda *_: None)
    assert promoted.tags["run_id"] == trained[0].info.run_id and promoted.tags["step"] == "8"
    shutil.rmtree(towers)
    with pytest.raises(ModelLoadError, match=r"the captioning model's vision tower cannot be loaded: it was not "
                                             r"bundled \(0 MB, over the 0 MB bundling limit\) and is looked for at "
                                             rf"'{towers / 'vision'}': copy the folder there"):
        mlflow.pyfunc.load_model("models:/big-towers@champion")


def test_a_model_that_does_not_caption_is_never_registered(trained, client, monkeypatch):
    """The model is tried (loaded, the input example captioned) before it becomes a version."""
    monkeypatch.setattr(P, "CAPTION_INSTRUCTION", "Describe the image concisely.")  # no <image> slot: cannot work
    with pytest.raises(P.PromoteError, match=r"does not load or caption its input example, so no version is "
                                             r"registered: .*prompt must hold exactly one <image> placeholder"):
        P.promote(trained[0].info.run_id, "never-registered", log=lambda *_: None)
    assert not client.search_registered_models(filter_string="name='never-registered'")


def test_a_source_that_is_nothing_known_is_one_line(store, capsys):
    assert cli.main(["promote", "no-such-run", "--name", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlmtrack: error: 'no-such-run' is neither a checkpoint folder, a "
                          "runs:/<run_id>/checkpoints/step_N URI, nor a run id in the tracking store sqlite:///")
    assert not store.search_registered_models()


def test_a_promotion_that_fails_at_the_sweeps_end_leaves_the_sweep_and_says_how_to_retry(store, tmp_path):
    from vlmtrack.config import Config
    from vlmtrack.tracking.base import JsonlTracker

    cfg = Config()
    cfg.sweep.study_name = "my_study"
    parent, lines = JsonlTracker(), []
    parent.run_id = "sweep-run"
    assert P.promote_winner(cfg, parent, {"mlflow_run_id": "gone-run"}, log=lines.append) is None
    assert lines == [f"[promote] FAILED to promote the winner (run gone-run) as my_study: PromoteError: 'gone-run' is "
                     f"neither a checkpoint folder, a runs:/<run_id>/checkpoints/step_N URI, nor a run id in the "
                     f"tracking store {store._tracking_client.tracking_uri}; retry with: vlmtrack promote gone-run "
                     f"--name my_study"]
    (tags,) = [e["tags"] for e in parent.events if e["kind"] == "tags"]
    assert tags["promotion_error"].startswith("PromoteError: 'gone-run' is neither")
    assert not store.search_registered_models()


def test_a_registered_version_is_a_checkpoint_source_by_alias_or_number(trained, client):
    """`vlmtrack export|ablate|golden models:/NAME@ALIAS`: the version's own copy of the connector and config,
    in a folder named after its step, identical to the run's checkpoint files."""
    from vlmtrack.tracking.artifacts import download_checkpoint

    run, out = trained
    rid = run.info.run_id
    assert cli.main(["promote", f"runs:/{rid}/checkpoints/step_4", "--name", "by-alias"]) == 0
    for uri in ("models:/by-alias@champion", "models:/by-alias/1"):
        folder, config = download_checkpoint(uri)
        assert folder.name == "step_4" and config.is_file()
        for name in ("connector.safetensors", "connector.json"):
            assert (folder / name).read_bytes() == (out / "checkpoints" / "step_4" / name).read_bytes()
    with pytest.raises(FileNotFoundError, match="models:/by-alias@nobody: no such registered model version"):
        download_checkpoint("models:/by-alias@nobody")
