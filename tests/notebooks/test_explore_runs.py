"""notebooks/explore_runs.ipynb runs top to bottom on a fresh demo run's results."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore_runs.ipynb"


def test_notebook_executes_against_the_demo_run(demo_run, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", demo_run["uri"])
    monkeypatch.setenv("VLMTRACK_EXPERIMENT", "e2e")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.output_type == "display_data")
    assert "data:image/webp;base64," in html and "<mark>" in html  # thumbnails; changes between checkpoints
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "runs in 'e2e'" in text
