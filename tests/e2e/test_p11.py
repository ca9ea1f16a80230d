"""`mlflow run . -e p11` on the embedded demo: what the MLflow store holds afterwards."""
import json

import pytest
from mlflow import MlflowClient

from vlmtrack.data.golden import latest_golden_table

pytestmark = pytest.mark.slow

BUCKETS = ("short", "medium", "long")


@pytest.fixture(scope="module")
def run(demo_run):
    client = MlflowClient(demo_run["uri"])
    exp = client.get_experiment_by_name("e2e")
    (r,) = client.search_runs([exp.experiment_id])
    return client, r, demo_run


def test_run_finished_with_every_metric(run):
    client, r, _ = run
    assert r.info.status == "FINISHED"
    expected = {"train_loss", "lr", "samples_per_s", "eval_loss", "eval_label_tokens_total", "eval_examples_total",
                "eval_truncated_pct", "quick_eval_loss", "data_truncated_pct", "data_label_zero_pct",
                "data_avg_label_tokens", "ablation_loss_correct", "ablation_loss_shuffled", "ablation_loss_zero",
                "ablation_loss_noise", "delta_shuffle", "delta_zero", "delta_noise", "ablation_order_ok",
                "step_time_mean_s", "step_time_p50_s", "step_time_p90_s", "step_time_max_s", "data_wait_share",
                "est_epoch_wall_s", "full_eval_time_s", "golden_time_s", "startup_wall_s", "loop_wall_s",
                "ablations_wall_s", "score"}
    expected |= {f"eval_loss_{b}" for b in BUCKETS} | {f"eval_label_tokens_{b}" for b in BUCKETS}
    assert expected <= set(r.data.metrics)
    assert {"split_hash", "golden_hash", "llm", "vision", "git_commit", "device", "vlmtrack_version"} <= set(r.data.tags)
    assert r.data.params["model.num_latents"] == "64"


def test_eval_loss_is_the_token_weighted_recombination_of_buckets(run):
    client, r, _ = run
    m = r.data.metrics
    recombined = sum(m[f"eval_loss_{b}"] * m[f"eval_label_tokens_{b}"] for b in BUCKETS) / m["eval_label_tokens_total"]
    assert m["eval_loss"] == pytest.approx(recombined, rel=1e-9)
    assert sum(m[f"eval_label_tokens_{b}"] for b in BUCKETS) == m["eval_label_tokens_total"]


def test_golden_table_has_64_rows_with_images(run, tmp_path):
    client, r, _ = run
    tables = [a["path"] for a in json.loads(r.data.tags["mlflow.loggedArtifacts"]) if a["type"] == "table"]
    assert latest_golden_table(64) in tables, "no golden table logged"
    table = json.load(open(client.download_artifacts(r.info.run_id, latest_golden_table(64), str(tmp_path))))
    assert len(table["data"]) == 64
    cols = table["columns"]
    assert {"image", "id", "bucket", "gt_text", "pred_text", "label_len", "pred_tokens_len"} <= set(cols)
    images = {f.path for f in client.list_artifacts(r.info.run_id, "golden/images")}
    for row in table["data"]:
        cell = dict(zip(cols, row))
        assert cell["image"]["filepath"] in images and cell["pred_text"].strip()


def test_split_and_checkpoint_artifacts(run):
    client, r, demo = run
    splits = [f.path for f in client.list_artifacts(r.info.run_id, "splits")]
    assert splits == ["splits/split_seed42_eval2000.json"]
    last = r.data.tags["last_checkpoint"]  # checkpoints/step_N: a logged model of the run (its files once)
    (model,) = client.search_logged_models([r.info.experiment_id], filter_string=(
        f"source_run_id='{r.info.run_id}' AND tags.`vlmtrack.checkpoint`='{last}'"))
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert files == {"connector.safetensors", "connector.json"}
    metrics = json.loads((demo["out"] / "metrics.json").read_text())
    assert metrics["split"]["bucket_counts"] == {"short": 666, "medium": 666, "long": 668}


def test_datasets_and_system_metrics_of_the_demo_run(run):
    """The run's lineage (the train split, eval set and golden set as MLflow datasets, digested by our hashes)
    and its system metrics, sampled every 10 s while the ~2-minute CPU run trained (train.system_metrics)."""
    client, r, _ = run
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in r.inputs.dataset_inputs}
    assert {k: d.digest for k, d in inputs.items()} == {"train": r.data.tags["train_split_hash"],
                                                         "eval": r.data.tags["split_hash"],
                                                         "golden": r.data.tags["golden_hash"]}
    cpu = client.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 3 and all(0 <= m.value <= 100 for m in cpu)
    assert {"system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= set(r.data.metrics)
