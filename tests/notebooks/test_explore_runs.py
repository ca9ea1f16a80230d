"""notebooks/explore_runs.ipynb runs top to bottom on a fresh demo run's results."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore_runs.ipynb"


def test_notebook_executes_against_the_demo_run(demo_run, monkeypatch, tmp_path):
    import mlflow

    from vlmtrack.tracking.promote import promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", demo_run["uri"])
    monkeypatch.setenv("VLMTRACK_EXPERIMENT", "e2e")
    monkeypatch.setenv("VLMTRACK_CHAMPION", "e2e-champion")
    mlflow.set_tracking_uri(demo_run["uri"])
    run = mlflow.search_runs(experiment_names=["e2e"], filter_string="metrics.eval_loss > 0",
                             order_by=["start_time ASC"], output_format="list")[0]  # the p11 run
    # the demo run's best checkpoint as the champion (the sweep's end does the same with its winner)
    promote(run.info.run_id, "e2e-champion", log=lambda *_: None)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.output_type == "display_data")
    assert "data:image/webp;base64," in html and "<mark>" in html  # thumbnails; changes between checkpoints
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "runs in 'e2e'" in text
    assert f"models:/e2e-champion@champion = version 1: run {run.info.run_id}" in text
    champion = html[html.index("champion caption"):]
    assert champion.count("<tr>") == 8 and champion.count("data:image/webp;base64,") == 8  # eight golden images
