"""The command line: complete help, one-line errors with their exit codes, --debug tracebacks, Ctrl-C,
and every MLproject entry point a command line that vlmtrack accepts."""
import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from vlmtrack import cli

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"train", "sweep", "ablate", "golden", "report", "bench", "build-demo", "export", "promote"}


def subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def test_every_argument_of_every_command_has_help():
    parser = cli.build_parser()
    sub = subparsers(parser)
    assert set(sub.choices) == COMMANDS
    assert {a.dest for a in sub._choices_actions} == COMMANDS and all(a.help for a in sub._choices_actions)
    for name, p in [("vlmtrack", parser), *sub.choices.items()]:
        for action in p._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"vlmtrack {name}" in out and f"\n    {name}" in out, name
    assert "--debug" in out and "--version" in out


def test_bad_command_line_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nosuch"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("vlmtrack: error: argument COMMAND: invalid choice")


def test_bad_config_key_is_one_line_and_exit_2(capsys):
    assert cli.main(["train", "train.lrr=1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "vlmtrack: error: unknown config key 'train.lrr'; did you mean 'train.lr'?"]


def test_any_other_error_is_one_line_and_exit_1(capsys):
    assert cli.main(["golden", "/no/such/checkpoint", "--no-track"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "vlmtrack: error: FileNotFoundError: '/no/such/checkpoint' is not a connector checkpoint folder "
        "(no connector.safetensors) (vlmtrack --debug ... shows the traceback)"]


@pytest.mark.parametrize("argv", [["--debug", "golden", "/no/such/checkpoint", "--no-track"],
                                  ["golden", "/no/such/checkpoint", "--no-track", "--debug"]])
def test_debug_shows_the_traceback_before_or_after_the_command(argv, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in fetch" in err
    assert err.rstrip().endswith("is not a connector checkpoint folder (no connector.safetensors)")
    assert "vlmtrack: error" not in err


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_build_demo", interrupted)
    assert cli.main(["build-demo"]) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("vlmtrack: interrupted")


@pytest.fixture
def empty_store(tmp_path, monkeypatch, capsys):
    """A store that exists (a fresh one makes MLflow log its table creation on stderr first)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient(uri).search_experiments()
    capsys.readouterr()
    return uri


def test_report_on_a_missing_run_or_experiment_is_one_line(empty_store, capsys):
    assert cli.main(["report", "0123abc"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"vlmtrack: error: no run '0123abc' in the tracking store {empty_store} (MLFLOW_TRACKING_URI picks the store)"]
    assert cli.main(["report", "--experiment", "nope"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"vlmtrack: error: no experiment 'nope' in the tracking store {empty_store} "
        "(--experiment names it; MLFLOW_TRACKING_URI picks the store)"]


def test_the_installed_command_exits_1_with_one_line(empty_store):
    """The real process: exit status and stderr as a shell sees them."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "vlmtrack.cli", "report", "--experiment", "nope"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"vlmtrack: error: no experiment 'nope' in the tracking store {empty_store} "
        "(--experiment names it; MLFLOW_TRACKING_URI picks the store)"]


def test_every_mlproject_entry_point_is_a_valid_command_line():
    from mlflow.projects._project_spec import load_project

    project = load_project(str(REPO))
    assert {"p11", "sweep", "ablate", "golden", "build_demo", "report", "bench", "export", "promote"} <= set(project._entry_points)
    parser = cli.build_parser()
    for name, entry in project._entry_points.items():
        required = {k: "outputs/demo/checkpoints/step_1" for k, p in entry.parameters.items() if p.default is None}
        words = shlex.split(entry.compute_command(required, storage_dir=str(REPO)))
        if words[0] == "torchrun":  # p11_ddp: torchrun ... -m vlmtrack.cli train ...
            words = ["python", *words[words.index("-m"):]]
        assert words[:3] == ["python", "-m", "vlmtrack.cli"], name
        args = parser.parse_args(words[3:])  # exits on an unknown command or option
        assert args.command == {"p11": "train", "p11_ddp": "train", "build_demo": "build-demo"}.get(name, name)
    report = parser.parse_args(shlex.split(project.get_entry_point("report").compute_command(
        {"run_id": "abc"}, storage_dir=str(REPO)))[3:])
    assert (report.run_id, report.sweep) == ("abc", "")  # "" = not given: cli passes `or None` on


def test_vlmtrack_sweep_and_mlflow_run_sweep_default_to_one_config():
    """`vlmtrack sweep` with no --config ran Config()'s grid (5e-5..2e-4, 1 epoch) while `mlflow run . -e sweep`
    ran configs/demo_sweep.yaml: both now take the demo sweep's file."""
    from mlflow.projects._project_spec import load_project

    from vlmtrack.config import load_config

    mlproject = load_project(str(REPO)).get_entry_point("sweep").parameters["config"].default
    args = cli.build_parser().parse_args(["sweep"])
    assert args.config == mlproject == cli.DEFAULT_SWEEP_CONFIG
    cfg = load_config(REPO / args.config)
    assert (cfg.sweep.lr, cfg.sweep.study_name, cfg.train.train_steps) == ([1.5e-3, 3e-3, 6e-3], "demo_sweep", 150)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_bad_data_is_refused_before_any_mlflow_run_exists(command, tiny_paths, tmp_path, store, capsys):
    """A bad record, a wrong image folder or a missing image costs seconds and leaves no FAILED run behind (it
    took 11-13 s and left one each time)."""
    import json

    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.config import dump_yaml

    records = json.loads(tiny_paths["data"].read_text())
    records[3]["id"] = None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    cfg.data.data_path = str(bad)
    dump_yaml(cfg, tmp_path / "cfg.yaml")
    assert cli.main([command, "--config", str(tmp_path / "cfg.yaml"), "--experiment", "pre"]) == 1
    err = capsys.readouterr().err
    assert "1 bad record(s)" in err and "id=<record 3>" in err
    assert cli.main([command, "--config", str(tmp_path / "cfg.yaml"), "--experiment", "pre",
                     f"data.data_path={tiny_paths['data']}", "data.image_folder=/no/such/folder"]) == 1
    assert "image folder '/no/such/folder' does not exist" in capsys.readouterr().err
    records[3]["id"] = "kept-id"
    records[5]["image"] = "gone/x.jpg"  # a missing image was found only when training (or eval) reached it
    bad.write_text(json.dumps(records))
    assert cli.main([command, "--config", str(tmp_path / "cfg.yaml"), "--experiment", "pre"]) == 1
    err = capsys.readouterr().err
    assert f"1 record(s) of 160 name an image that is not under {tiny_paths['images']}" in err
    assert f"id={records[5]['id']}: gone/x.jpg" in err and "data.on_bad_record=skip" in err
    assert store.get_experiment_by_name("pre") is None  # no experiment, no run


def test_a_runs_console_holds_no_library_noise(tiny_paths, tmp_path):
    """Optuna's ExperimentalWarnings (heartbeats and stale-trial retries, used by design) and transformers'
    model-loading bars printed on every run and read like failures. A tiny train and sweep, as a user starts
    them: stderr holds none of them."""
    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.config import dump_yaml

    cfg = tiny_config(tiny_paths, tmp_path / "out", train_steps=4, save_every=4, quick_eval_steps=0)
    cfg.sweep.lr, cfg.sweep.vision_ln, cfg.sweep.output_dir = [1e-3, 2e-3], [False, True], str(tmp_path / "sweep")
    cfg.data.num_workers = 0
    dump_yaml(cfg, tmp_path / "cfg.yaml")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    env.pop("MLFLOW_RUN_ID", None)
    for command in ("train", "sweep"):
        done = subprocess.run([sys.executable, "-m", "vlmtrack.cli", command, "--config", str(tmp_path / "cfg.yaml")],
                              env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        for noise in ("ExperimentalWarning", "Heartbeat of storage", "Loading weights", "Writing model shards"):
            assert noise not in done.stderr, (command, noise, done.stderr[-2000:])
