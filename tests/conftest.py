import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny_models import build_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def feature_cache_in_tmp(tmp_path_factory):
    """The vision-feature cache of every test run (and of the processes they start) in a temporary folder."""
    os.environ["VLMTRACK_CACHE"] = str(tmp_path_factory.mktemp("vlmtrack-cache"))
    yield
    os.environ.pop("VLMTRACK_CACHE", None)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Random-weight tiny bundle + 160-sample dataset, built once per test session."""
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def demo_assets():
    """The embedded demo's dataset and model bundle, built once (cached under data/demo/, as the README's
    demo command leaves them)."""
    from vlmtrack.demo.assets import ensure_demo_assets

    return ensure_demo_assets(REPO / "data" / "demo")


@pytest.fixture(scope="session")
def demo_run(demo_assets, tmp_path_factory):
    """`mlflow run <project> -e p11 --env-manager local` once per test session, started from a temporary
    folder (as a user runs a project from elsewhere: MLproject's defaults must not depend on the caller's
    folder), against a temporary store."""
    tmp = tmp_path_factory.mktemp("p11")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, VLMTRACK_DEMO_DIR=str(REPO / "data" / "demo"))
    env.pop("MLFLOW_RUN_ID", None)
    overrides = f"train.output_dir={tmp}/out data.golden_set_path={tmp}/golden/demo_golden64.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "p11", "--env-manager", "local",
         "--experiment-name", "e2e", "-P", f"overrides={overrides}"],
        cwd=tmp, env=dict(env, PWD=str(tmp)), capture_output=True, text=True, timeout=900)
    (tmp / "run.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {"uri": uri, "out": tmp / "out", "log": done.stdout + done.stderr, "tmp": tmp}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store, the process's tracking URI for the test; its client."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)
