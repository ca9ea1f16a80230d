"""A real `mlflow server` on 127.0.0.1: a short training logs to it over HTTP and MlflowClient reads it back."""
import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.helpers.servers import mlflow_server
from tests.helpers.tiny_models import tiny_config
from vlmtrack.config import dump_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "server.log",
                       "--artifacts-destination", str(tmp_path / "art")) as url:
        yield url


def test_training_logs_to_a_tracking_server_over_http(server, tiny_paths, tmp_path):
    cfg = tiny_config(tiny_paths, tmp_path / "out", keep_checkpoints=1)  # step_4 goes, through the server
    dump_yaml(cfg, tmp_path / "cfg.yaml")
    env = dict(os.environ, MLFLOW_TRACKING_URI=server)
    env.pop("MLFLOW_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "vlmtrack.cli", "train", "--config", str(tmp_path / "cfg.yaml"),
                           "--experiment", "over-http", "train.run_name=http-run"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("over-http")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "http-run"
    assert {"eval_loss", "eval_loss_short", "train_loss", "delta_shuffle", "step_time_p90_s"} <= set(run.data.metrics)
    assert run.data.params["train.train_steps"] == "8"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert {"path": "golden/golden6.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    table = json.load(open(client.download_artifacts(run.info.run_id, "golden/golden6.json", str(tmp_path))))
    assert len(table["data"]) == 6 and table["columns"][0] == "image"
    assert {row[table["columns"].index("step")] for row in table["data"]} == {8}
    image = table["data"][0][0]
    images = {f.path for f in client.list_artifacts(run.info.run_id, "golden/images")}
    assert image["type"] == "image" and {image["filepath"], image["compressed_filepath"]} <= images
    # checkpoints are logged models; train.keep_checkpoints=1: step_4's deleted through the server (the best
    # eval is step 8's)
    (model,) = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    assert model.name == "step_8" and {m.key for m in model.metrics} >= {"eval_loss"}
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert files == {"connector.safetensors", "connector.json"}
    assert not client.list_artifacts(run.info.run_id, "checkpoints")
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_8"]
    local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "dl"))
    assert '"final_eval"' in open(local).read()
