import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_run(demo_assets, tmp_path_factory):
    """`mlflow run . -e p11 --env-manager local` once per test session, against a temporary store."""
    tmp = tmp_path_factory.mktemp("p11")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, VLMTRACK_DEMO_DIR=str(REPO / "data" / "demo"))
    env.pop("MLFLOW_RUN_ID", None)
    overrides = f"train.output_dir={tmp}/out data.golden_set_path={tmp}/golden/demo_golden64.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "p11", "--env-manager", "local",
         "--experiment-name", "e2e", "-P", f"overrides={overrides}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (tmp / "run.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {"uri": uri, "out": tmp / "out", "log": done.stdout + done.stderr, "tmp": tmp}
