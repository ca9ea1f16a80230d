"""The demo sweep ends with its winner registered as `models:/<study>@champion`, a captioning model that loads
with mlflow.pyfunc and serves with `mlflow models serve`. One cheap demo sweep (two trials of a few steps on
a small slice of the demo data) for the module."""
import base64
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from tests.helpers.servers import model_server
from vlmtrack import cli

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STUDY = "champion_sweep"


def new_images() -> list[bytes]:
    """Two pictures that are not in the demo data set (drawn here, JPEG and PNG)."""
    out = []
    for fmt, (colour, shape) in (("JPEG", ("green", "ellipse")), ("PNG", ("blue", "rectangle"))):
        image = Image.new("RGB", (80, 80), "white")
        getattr(ImageDraw.Draw(image), shape)((20, 25, 60, 65), fill=colour)
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def sweep(demo_assets, tmp_path_factory):
    """`vlmtrack sweep` on the demo (configs/demo_sweep.yaml, MLproject's default) at the cheapest settings that
    still train, score and compare two trials."""
    import mlflow

    tmp = tmp_path_factory.mktemp("champion")
    uri = f"sqlite:///{tmp}/mlflow.db"
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "VLMTRACK_DEMO_DIR")}
    os.environ.update(MLFLOW_TRACKING_URI=uri, VLMTRACK_DEMO_DIR=str(REPO / "data" / "demo"))
    mlflow.set_tracking_uri(uri)
    overrides = [f"sweep.output_dir={tmp}/sweep", f"sweep.study_name={STUDY}", "sweep.lr=[1.5e-3,6e-3]",
                 "sweep.vision_ln=[false]", "data.max_samples=400", "data.eval_size=120", "data.golden_size=6",
                 "data.golden_counts=[2,2,2]", f"data.golden_set_path={tmp}/golden.jsonl", "data.num_workers=0",
                 "train.train_steps=6", "train.batch_size=8", "train.save_every=6", "train.eval_at_steps=[3]",
                 "eval.ablation_samples=16", "eval.max_new_tokens=12"]
    try:
        assert cli.main(["--debug", "sweep", "--config", str(REPO / "configs" / "demo_sweep.yaml"), "--experiment",
                         "champ", *overrides]) == 0
        yield {"uri": uri, "tmp": tmp}
    finally:
        for k, v in before.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_the_sweep_promotes_its_lowest_score_trial_as_champion(sweep):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(sweep["uri"])
    exp = client.get_experiment_by_name("champ")
    trials = client.search_runs([exp.experiment_id], "tags.optuna_trial_number != ''")
    assert len(trials) == 2
    winner = min(trials, key=lambda r: r.data.metrics["score"])
    champion = client.get_model_version_by_alias(STUDY, "champion")  # sweep.registered_model "" = the study name
    tags = champion.tags
    assert tags["run_id"] == winner.info.run_id == champion.run_id
    assert float(tags["score"]) == pytest.approx(winner.data.metrics["score"])
    assert float(tags["lr"]) == float(winner.data.params["train.lr"]) and tags["vision_ln"] == "False"
    assert tags["checkpoint"] == f"runs:/{winner.info.run_id}/checkpoints/step_6" and tags["step"] == "6"
    assert tags["optuna_trial_number"] == winner.data.tags["optuna_trial_number"] and tags["optuna_study"] == STUDY
    assert tags["split_hash"] == winner.data.tags["split_hash"] and tags["golden_hash"] == winner.data.tags["golden_hash"]
    assert float(tags["eval_loss"]) == pytest.approx(
        [m.value for m in client.get_metric_history(winner.info.run_id, "eval_loss") if m.step == 6][-1])
    (parent,) = client.search_runs([exp.experiment_id], f"tags.winner_run_id = '{winner.info.run_id}'")
    assert tags["sweep_run_id"] == parent.info.run_id
    assert parent.data.tags["champion"] == f"models:/{STUDY}@champion (version {champion.version})"

    model = mlflow.pyfunc.load_model(f"models:/{STUDY}@champion")
    captions = model.predict(pd.DataFrame({"image": new_images()}))
    assert list(captions.columns) == ["caption"] and len(captions) == 2
    assert all(isinstance(c, str) and c.strip() for c in captions["caption"])
    # the towers travel with the demo model: its files hold them, not a path on this machine
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{STUDY}@champion", dst_path=str(sweep["tmp"] / "dl")))
    assert (files / "artifacts" / "llm" / "config.json").exists() and (files / "artifacts" / "vision").is_dir()
    spec = json.loads((files / "artifacts" / "captioner.json").read_text())
    assert {t["kind"] for t in spec["towers"].values()} == {"bundled"}
    # one token at the request's wish instead of the run's 12
    short = model.predict(pd.DataFrame({"image": new_images()[:1]}), params={"max_new_tokens": 1})
    assert len(short["caption"][0].split()) <= 1


def _post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_mlflow_models_serve_captions_base64_images_and_refuses_an_undecodable_one(sweep):
    env = dict(os.environ, MLFLOW_TRACKING_URI=sweep["uri"])
    with model_server(f"models:/{STUDY}@champion", sweep["tmp"] / "serve.log", env) as url:
        records = [{"image": base64.b64encode(b).decode()} for b in new_images()]
        status, body = _post(f"{url}/invocations", {"dataframe_records": records})
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert len(predictions) == 2 and all(p["caption"].strip() for p in predictions)
        status, body = _post(f"{url}/invocations", {"dataframe_records": records[:1],
                                                     "params": {"max_new_tokens": 1}})
        assert status == 200 and len(json.loads(body)["predictions"][0]["caption"].split()) <= 1

        bad = [records[0], {"image": base64.b64encode(b"GIF89a but not really an image").decode()}]
        status, body = _post(f"{url}/invocations", {"dataframe_records": bad})
        assert status == 400, body
        assert json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "image 1: not a decodable image" in body
        status, body = _post(f"{url}/invocations", {"dataframe_records": records[:1], "params": {"top_p": 0}})
        assert status == 400 and "top_p must be in (0, 1]" in body
