"""The golden captions at any run length, against a real MLflow store: every save's captions read back,
each table with its table view (listed in `mlflow.loggedArtifacts`), the list short enough for MLflow's
8,000-character cut however many saves; a logging call that fails is recorded on the run."""
import json
import math

import pytest
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from tests.tracking.test_mlflow_tracker import golden_rows
from vlmtrack.data.golden import GOLDEN_HISTORY_SAVES, history_golden_table, latest_golden_table
from vlmtrack.tracking.golden_tables import GoldenTables
from vlmtrack.tracking.mlflow_tracker import FAILED_CALLS, FAILED_CALLS_FILE, MlflowTracker
from vlmtrack.tracking.report import load_table

SAVES = 620


@pytest.mark.slow
def test_620_saves_keep_every_caption_and_every_table_view(store, tiny_paths):
    client = store
    tr = MlflowTracker(experiment="long", run_name="620 saves")
    rows, tables = golden_rows(tiny_paths), GoldenTables()
    for save in range(1, SAVES + 1):
        recs = [dict(r, pred_text=f"pred {r['id']} at save {save}") for r in rows]
        tables.log(tr, recs, step=10 * save, image_root=tiny_paths["images"])
    tr.finish()
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and FAILED_CALLS not in run.data.metrics
    listed = json.loads(run.data.tags[MLFLOW_LOGGED_ARTIFACTS])
    assert len(run.data.tags[MLFLOW_LOGGED_ARTIFACTS]) < 8000
    history = [history_golden_table(10 * first, 6) for first in range(1, SAVES + 1, GOLDEN_HISTORY_SAVES)]
    assert len(history) == math.ceil(SAVES / GOLDEN_HISTORY_SAVES)
    assert [e["path"] for e in listed] == [latest_golden_table(6), *history]
    first, last = load_table(client, tr.run_id, history[0]), load_table(client, tr.run_id, history[-1])
    assert [r["pred_text"] for r in first[:6]] == [f"pred {i} at save 1" for i in range(6)]
    assert last[-1]["pred_text"] == f"pred 5 at save {SAVES}" and last[-1]["step"] == 10 * SAVES
    latest = load_table(client, tr.run_id, latest_golden_table(6))
    assert [r["step"] for r in latest] == [10 * SAVES] * 6  # overwritten at each save, never appended to
    steps = [r["step"] for path in history for r in load_table(client, tr.run_id, path)]
    assert steps == [10 * s for s in range(1, SAVES + 1) for _ in range(6)]  # every save, once
    cell = latest[0]["image"]
    assert cell["type"] == "image" and cell["filepath"].startswith("golden/images/")
    assert len(client.list_artifacts(tr.run_id, "golden/images")) == 12  # the 6 images once (png + webp)


def test_one_odd_image_costs_only_its_own_thumbnail_and_is_recorded(store, tiny_paths, tmp_path):
    """A 10,000 x 20 web banner gets its thumbnail (MLflow's own resize made it 256 x 0 and lost the whole
    table); an unreadable file costs its row's thumbnail alone, recorded on the run as a failed call."""
    from PIL import Image

    client = store
    rows = golden_rows(tiny_paths, 5)
    root = tmp_path / "images"
    for r in rows:
        (root / r["image_relpath"]).parent.mkdir(parents=True, exist_ok=True)
        (root / r["image_relpath"]).write_bytes((tiny_paths["images"] / r["image_relpath"]).read_bytes())
    Image.new("RGB", (10_000, 20), "orange").save(root / "banner.jpg")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    rows += [dict(rows[0], id="banner", image_relpath="banner.jpg"), dict(rows[0], id="broken", image_relpath="broken.jpg")]
    tr = MlflowTracker(experiment="long", run_name="odd images")
    GoldenTables().log(tr, rows, step=4, image_root=root)
    tr.log_metrics({"train_loss": 1.0}, 4)
    tr.finish()
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 1.0
    table = {r["id"]: r for r in load_table(client, tr.run_id, latest_golden_table(7))}
    assert len(table) == 7 and table["broken"]["image"] is None and table["broken"]["pred_text"]
    images = {f.path for f in client.list_artifacts(tr.run_id, "golden/images")}
    assert all(table[k]["image"]["compressed_filepath"] in images for k in table if k != "broken")
    assert "golden/images/banner.webp" in images
    assert run.data.metrics[FAILED_CALLS] == 1  # the unreadable file, once for both tables
    failed = json.loads(open(client.download_artifacts(tr.run_id, FAILED_CALLS_FILE, str(tmp_path))).read())
    assert len(failed["failed_calls"]) == 1 and failed["failed_calls"][0].startswith("log_table image broken.jpg")
