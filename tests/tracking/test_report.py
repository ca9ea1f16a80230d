"""`vlmtrack report` reads a run back from MLflow alone: its eval loss by bucket with token counts, golden
items of its last checkpoint, the sweep table with the winner marked; report.md logged on the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.helpers.tiny_models import tiny_config
from vlmtrack.cli import main
from vlmtrack.config import dump_yaml
from vlmtrack.tracking.sweep_table import format_table
from vlmtrack.tracking.report import ReportError, build_report

REPO = Path(__file__).resolve().parents[2]
BUCKETS = ("short", "medium", "long")


@pytest.fixture(scope="module")
def store(tiny_paths, tmp_path_factory):
    """`vlmtrack train`, then a 2x2 `vlmtrack sweep` (whose trials are newer training runs, nested), tiny
    models, one sqlite store, experiment 'rep'."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        train = tiny_config(tiny_paths, tmp / "train")
        sweep = tiny_config(tiny_paths, tmp / "unused", train_steps=4, save_every=4, quick_eval_steps=0)
        sweep.sweep.lr, sweep.sweep.vision_ln = [1e-3, 3e-3], [False, True]
        sweep.sweep.output_dir, sweep.sweep.study_name = str(tmp / "sweep"), "tiny-sweep"
        for cfg, name in [(train, "train.yaml"), (sweep, "sweep.yaml")]:
            cfg.data.num_workers = 0  # tiny data: no loader processes on a shared 2-core machine
            dump_yaml(cfg, tmp / name)
        assert main(["train", "--config", str(tmp / "train.yaml"), "--experiment", "rep"]) == 0
        assert main(["sweep", "--config", str(tmp / "sweep.yaml"), "--experiment", "rep"]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    train, parent = runs[0], next(r for r in runs if "winner_run_id" in r.data.tags)
    return {"uri": uri, "client": client, "train": train, "sweep": parent, "tmp": tmp}


@pytest.fixture
def uri(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(store["uri"])
    return store["uri"]


def table(client, run_id, path, tmp):
    data = json.load(open(client.download_artifacts(run_id, path, str(tmp))))
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def one_line(caption):
    return " ".join(caption.split())


def assert_reports_on(text, client, run, tmp):
    """The run's own numbers and its last checkpoint's golden items are in the text."""
    m = run.data.metrics
    assert f"| all | {m['eval_loss']:.4f} | {int(m['eval_label_tokens_total']):,} | " \
           f"{int(m['eval_examples_total']):,} |" in text
    rows = [f"| {b} | {m[f'eval_loss_{b}']:.4f} | {int(m[f'eval_label_tokens_{b}']):,} | "
            f"{int(m[f'eval_examples_{b}']):,} |" for b in BUCKETS]
    assert all(r in text for r in rows) and sorted(rows, key=text.index) == rows  # in the configured order
    step = int(run.data.tags["last_checkpoint"].rsplit("_", 1)[1])
    assert f"step {step})" in text
    golden = table(client, run.info.run_id, "golden/golden6.json", tmp)  # the latest save's captions
    assert len(golden) == 6 and "(6 of 6, `golden/golden6.json`)" in text
    assert {r["step"] for r in golden} == {step}
    for r in golden:  # a caption is one table cell: its whitespace collapsed to single spaces
        assert f"| {r['id']} | {one_line(r['gt_text'])} | {one_line(r['pred_text'])} |" in text


def test_default_is_the_latest_top_level_training_run_with_the_sweep(store, uri, tmp_path):
    client, train, sweep = store["client"], store["train"], store["sweep"]
    report = build_report(experiment="rep")
    assert report.run_id == train.info.run_id  # not the newer sweep trials, which are nested
    text = report.text
    assert text.startswith(f"# vlmtrack report: {train.info.run_name}\n")
    assert_reports_on(text, client, train, tmp_path)
    history = table(client, train.info.run_id, "golden/history/golden6_from_step_4.json", tmp_path)
    assert [r["step"] for r in history] == [4] * 6 + [8] * 6  # every save's captions stay in MLflow

    rows = table(client, sweep.info.run_id, "sweep/summary.json", tmp_path)
    assert len(rows) == 4
    winner = min(rows, key=lambda r: r["score"])
    assert winner["mlflow_run_id"] == sweep.data.tags["winner_run_id"]
    lines = format_table(rows).splitlines()
    for r, line in zip(rows, lines[1:]):
        assert (line + "  ← winner" if r is winner else line + "\n") in text
    assert text.count("← winner") == 1
    delimiter = text[text.index(lines[0]):].splitlines()[1]  # under the header: a Markdown table's delimiter row
    assert set(delimiter) == {"-", "|"} and delimiter.count("|") == lines[0].count("|") == 5


def test_cli_prints_the_report_and_logs_report_md_on_the_run(store, uri, capsys, tmp_path):
    client, train = store["client"], store["train"]
    assert main(["report", train.info.run_id, "--no-sweep", "--items", "3"]) == 0
    out = capsys.readouterr().out
    text, logged = out.split("[report] ")
    assert logged == f"report.md logged on run {train.info.run_id}\n"
    assert "## Sweep" not in text and "## Golden captions (3 of 6," in text
    assert open(client.download_artifacts(train.info.run_id, "report.md", str(tmp_path))).read() == text


def test_a_sweep_run_reports_on_its_winner_and_holds_optuna_plots(store, uri, tmp_path):
    client, sweep = store["client"], store["sweep"]
    winner = client.get_run(sweep.data.tags["winner_run_id"])
    report = build_report(sweep.info.run_id)
    assert report.run_id == sweep.info.run_id  # report.md goes on the run asked about
    assert f"Run `{winner.info.run_id}`" in report.text and "## Sweep `tiny-sweep`" in report.text
    assert_reports_on(report.text, client, winner, tmp_path)
    plots = {f.path: f.file_size for f in client.list_artifacts(sweep.info.run_id, "sweep/optuna")}
    assert set(plots) == {"sweep/optuna/optimization_history.png", "sweep/optuna/slice.png",
                          "sweep/optuna/contour_lr_vision_ln.png"}
    assert all(size > 10_000 for size in plots.values()), plots  # real PNGs, not empty files


def test_missing_run_experiment_or_training_run(store, uri):
    with pytest.raises(ReportError, match=r"^no run 'nosuchrun' in the tracking store sqlite:"):
        build_report("nosuchrun")
    with pytest.raises(ReportError, match=r"^no experiment 'nope' in the tracking store"):
        build_report(experiment="nope")
    client = MlflowClient(uri)
    empty = client.create_experiment("empty")
    with pytest.raises(ReportError, match=r"^no finished training run or complete sweep in experiment 'empty'"):
        build_report(experiment="empty")
    bare = client.create_run(empty).info.run_id  # e.g. an `ablate` run: nothing trained
    with pytest.raises(ReportError, match=rf"^run '{bare}' has no eval_loss"):
        build_report(bare)
    with pytest.raises(ReportError, match="holds no sweep summary"):
        build_report(store["train"].info.run_id, sweep_id=store["train"].info.run_id)


def test_mlproject_entry_reports_on_the_experiment_mlflow_run_is_given(store, uri, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "report", "--env-manager", "local",
                           "--experiment-name", "rep"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train = store["train"]
    assert f"# vlmtrack report: {train.info.run_name}" in done.stdout and "← winner" in done.stdout
    assert f"report.md logged on run {train.info.run_id}" in done.stdout


def test_a_sweep_only_experiment_reports_on_its_latest_sweep(store, uri, tmp_path):
    """With no run id and no finished top-level training run (here: the one training run deleted), the
    report is the latest complete sweep's, through its winner, with its table."""
    client, sweep = store["client"], store["sweep"]
    client.delete_run(store["train"].info.run_id)
    try:
        report = build_report(experiment="rep")
    finally:
        client.restore_run(store["train"].info.run_id)
    assert report.run_id == sweep.info.run_id
    assert f"Run `{sweep.data.tags['winner_run_id']}`" in report.text and "## Sweep `tiny-sweep`" in report.text


def test_a_missing_artifact_is_named_in_one_line_with_its_store(store, uri, tmp_path):
    """The sweep's summary gone from the artifact store: one line naming the run, the artifact and the store
    (was a raw MlflowException about 'summary.json')."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    train, sweep = store["train"], store["sweep"]
    summary = Path(local_file_uri_to_path(sweep.info.artifact_uri)) / "sweep" / "summary.json"
    summary.rename(summary.with_suffix(".moved"))
    try:
        with pytest.raises(ReportError) as err:
            build_report(train.info.run_id, sweep_id=sweep.info.run_id)
    finally:
        summary.with_suffix(".moved").rename(summary)
    message = str(err.value)
    assert "\n" not in message and f"run {sweep.info.run_id}: artifact 'sweep/summary.json'" in message
    assert sweep.info.artifact_uri in message
