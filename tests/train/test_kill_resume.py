"""A training process SIGKILLed at a random step, then resumed: the final metrics equal an uninterrupted
run's, no checkpoint is half-written, and the killed attempt's MLflow run is marked KILLED and linked
to the run that resumed it, both ways."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.helpers.tiny_models import tiny_config
from vlmtrack.config import dump_yaml

pytestmark = pytest.mark.slow


def train_cmd(cfg_path, *overrides):
    return [sys.executable, "-m", "vlmtrack.cli", "train", "--config", str(cfg_path), "--experiment", "kill",
            *overrides]


def test_sigkill_then_resume(tiny_paths, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    env.pop("MLFLOW_RUN_ID", None)
    kw = dict(train_steps=96, save_every=4, log_every=2, quick_eval_steps=0, run_golden_every="never")
    full_cfg, kill_cfg = tiny_config(tiny_paths, tmp_path / "full", **kw), tiny_config(tiny_paths, tmp_path / "kill", **kw)
    dump_yaml(full_cfg, tmp_path / "full.yaml")
    dump_yaml(kill_cfg, tmp_path / "kill.yaml")
    done = subprocess.run(train_cmd(tmp_path / "full.yaml"), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(train_cmd(tmp_path / "kill.yaml"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "kill" / "checkpoints"
    target = random.Random().choice([8, 16, 24, 32, 40])
    deadline = time.time() + 300
    while not (ckpts / f"step_{target}").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.random() * 0.2)  # somewhere inside a later step, perhaps inside a save
    assert proc.poll() is None, f"the run ended before the kill (target step {target}): it needs more steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "kill" / "metrics.json").exists()
    for folder in ckpts.glob("step_*"):  # atomic: every visible checkpoint is complete
        assert {p.name for p in folder.iterdir()} == {"connector.safetensors", "connector.json", "trainer_state.pt"}

    done = subprocess.run(train_cmd(tmp_path / "kill.yaml", "train.resume_from=latest"), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "kill" / "metrics.json").read_text())
    assert resumed["final_eval"]["eval_loss"] == pytest.approx(full["final_eval"]["eval_loss"], abs=1e-6)
    assert resumed["ablations"]["delta_zero"] == pytest.approx(full["ablations"]["delta_zero"], abs=1e-6)

    attempts = json.loads((tmp_path / "kill" / "mlflow_runs.json").read_text())
    assert len(attempts) == 2
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    killed, resumer = client.get_run(attempts[0]["run_id"]), client.get_run(attempts[1]["run_id"])
    assert killed.info.status == "KILLED" and resumer.info.status == "FINISHED"
    assert killed.data.tags["resumed_by_run_id"] == resumer.info.run_id
    assert resumer.data.tags["resumed_from_run_id"] == killed.info.run_id
