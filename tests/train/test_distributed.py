"""Data-parallel training on CPU (gloo, 2 processes): the same steps, eval and ablation losses as one
rank; rank 0 alone logs and writes; a run stopped on 2 ranks resumes on 1 (and back) to the same end."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers.tiny_models import tiny_config
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.runtime import distributed as dist
from vlmtrack.train import loop
from vlmtrack.data.loader import rank_shard, rank_slice

REL = 1e-5
BUCKETS = ("short", "medium", "long")
WRITE_MODES = set("wax+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dies_after(stop_step: int, error: type[BaseException]):
    """save_checkpoint that writes the step's checkpoint and then dies: a run killed right after a save."""
    real_save = ckpt.save_checkpoint

    def save(out_dir, step, *a, **kw):
        path = real_save(out_dir, step, *a, **kw)
        if step == stop_step:
            raise error(f"killed after the step-{step} checkpoint")
        return path
    return save


def rank_main(rank: int, world: int, port: int, cfg, results: Path, stop_after_step: int) -> None:
    """One torchrun-like rank: joins the gloo group from the env vars, trains, leaves its result (outside
    the run's output dir) and the files it wrote there."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    out = str(cfg.output_dir.resolve())
    written = []

    def audit(event, args):  # every file this rank opens for writing or renames into the run's output dir
        if event == "open" and isinstance(args[0], (str, os.PathLike)) and WRITE_MODES & set(str(args[1] or "")):
            written.append(os.fspath(args[0]))
        elif event in ("os.rename", "os.replace"):
            written.append(str(args[1]))

    sys.addaudithook(audit)
    if stop_after_step:
        ckpt.save_checkpoint = dies_after(stop_after_step, RuntimeError)
    dist.init_from_env("cpu")
    try:
        tracker = JsonlTracker(results / f"events-rank{rank}.jsonl")
        result = loop.train(cfg, tracker, log=lambda *_: None)
    finally:
        mine = sorted({str(Path(p).resolve()) for p in written if str(Path(p).resolve()).startswith(out)})
        (results / f"written-rank{rank}.json").write_text(json.dumps(mine))
        dist.teardown()
    (results / f"result-rank{rank}.json").write_text(json.dumps(result))


def spawn(cfg, results: Path, world: int = 2, stop_after_step: int = 0) -> list[dict]:
    results.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = "1"  # the children's threads, from their start
    mp.spawn(rank_main, args=(world, free_port(), cfg, results, stop_after_step), nprocs=world, join=True)
    return [json.loads((results / f"result-rank{r}.json").read_text()) for r in range(world)]


def run_cfg(tiny_paths, out: Path):
    return tiny_config(tiny_paths, out, gradient_accum=2, log_every=2)


@pytest.fixture(scope="module")
def one_rank(tiny_paths, tmp_path_factory):
    """The reference: the same config trained uninterrupted on one rank, in this process."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("one") / "run"
    tracker = JsonlTracker()
    return loop.train(run_cfg(tiny_paths, out), tracker, log=lambda *_: None), tracker


def assert_same_end(result: dict, reference: dict) -> None:
    got, want = result["final_eval"], reference["final_eval"]
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=REL)
    for b in BUCKETS:
        assert got[f"eval_loss_{b}"] == pytest.approx(want[f"eval_loss_{b}"], rel=REL)
        assert got[f"eval_label_tokens_{b}"] == want[f"eval_label_tokens_{b}"]
        assert got[f"eval_examples_{b}"] == want[f"eval_examples_{b}"]
    for k in ("ablation_loss_correct", "ablation_loss_shuffled", "ablation_loss_zero", "ablation_loss_noise"):
        assert result["ablations"][k] == pytest.approx(reference["ablations"][k], rel=REL)


def test_rank_slices_cover_each_global_batch_once():
    batch = list(range(10))
    assert [rank_slice(batch, r, 3) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert rank_shard([[0], [1], [2]], 1, 2) == [[1]]


def test_two_ranks_train_and_evaluate_like_one(one_rank, tiny_paths, tmp_path):
    reference, ref_tracker = one_rank
    out = tmp_path / "run"
    results = spawn(run_cfg(tiny_paths, out), tmp_path / "results")
    for result in results:  # both ranks end with the aggregate, not their shard's
        assert_same_end(result, reference)
    final = results[0]["final_eval"]
    assert final["eval_examples_total"] == 48
    assert final["eval_label_tokens_total"] == reference["final_eval"]["eval_label_tokens_total"]
    # the buckets recombine into the overall loss: sums of loss x tokens, not a mean of rank means
    recombined = sum(final[f"eval_loss_{b}"] * final[f"eval_label_tokens_{b}"] for b in BUCKETS)
    assert recombined / final["eval_label_tokens_total"] == pytest.approx(final["eval_loss"], rel=1e-12)
    # the training losses are the global ones too, logged once, by rank 0
    events = [json.loads(x) for x in (tmp_path / "results" / "events-rank0.jsonl").read_text().splitlines()]
    logged = {(e["step"], k): v for e in events if e["kind"] == "metrics" for k, v in e["metrics"].items()}
    for name in ("train_loss", "eval_loss", "quick_eval_loss"):
        ref_steps = [s for s, _ in ref_tracker.metrics(name)]
        steps = [e["step"] for e in events if e["kind"] == "metrics" and name in e["metrics"]]
        assert steps == ref_steps, name
        for s, v in ref_tracker.metrics(name):
            assert logged[(s, name)] == pytest.approx(v, rel=REL), (name, s)
    assert not (tmp_path / "results" / "events-rank1.jsonl").exists()
    # rank 0 wrote the outputs; rank 1 wrote nothing but its write probe
    written = [json.loads((tmp_path / "results" / f"written-rank{r}.json").read_text()) for r in (0, 1)]
    assert [p for p in written[1] if ".write-probe-" not in p] == []
    assert str((out / "metrics.json").resolve()) in written[0]
    assert json.loads((out / "metrics.json").read_text()) == results[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_8"]
    assert len((out / "qual" / "step_8_golden6.jsonl").read_text().splitlines()) == 6


def test_two_rank_run_stopped_at_a_checkpoint_resumes_on_one_rank(one_rank, tiny_paths, tmp_path):
    cfg = run_cfg(tiny_paths, tmp_path / "run")
    with pytest.raises((mp.ProcessRaisedException, mp.ProcessExitedException)):
        spawn(cfg, tmp_path / "results", stop_after_step=4)  # rank 0 dies; rank 1 loses its peer
    assert ckpt.latest_checkpoint(cfg.output_dir).name == "step_4"
    state = ckpt.load_trainer_state(cfg.output_dir / "checkpoints" / "step_4")
    assert state["global_sample_index"] == 4 * 8
    cfg.train.resume_from = "latest"
    resumed = loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    assert_same_end(resumed, one_rank[0])


def test_one_rank_run_stopped_at_a_checkpoint_resumes_on_two_ranks(one_rank, tiny_paths, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "save_checkpoint", dies_after(4, KeyboardInterrupt))
    cfg = run_cfg(tiny_paths, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    monkeypatch.undo()
    cfg.train.resume_from = "latest"
    results = spawn(cfg, tmp_path / "results")
    assert_same_end(results[0], one_rank[0])


def test_torchrun_cli_opens_one_mlflow_run_from_rank_0(tiny_paths, tmp_path):
    import mlflow

    from vlmtrack.config import dump_yaml

    cfg = tiny_config(tiny_paths, tmp_path / "run", quick_eval_steps=0, run_golden_every="end")
    cfg.eval.run_ablations = False
    dump_yaml(cfg, tmp_path / "run.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    done = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "vlmtrack.cli", "train",
                           "--config", str(tmp_path / "run.yaml"), "--experiment", "ddp", "train.device=cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.count("[mlflow] run ") == 1 and "(2 ranks)" in done.stdout
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["ranks"] == "2"
    history = mlflow.MlflowClient(uri).get_metric_history(runs[0].info.run_id, "train_loss")
    assert [m.step for m in history] == [2, 4, 6, 8]  # each logged once, by rank 0 alone
    assert len(json.loads((tmp_path / "run" / "mlflow_runs.json").read_text())) == 1


def test_mlproject_p11_ddp_is_torchrun_around_the_train_command():
    import shlex

    from mlflow.projects._project_spec import load_project

    from vlmtrack import cli

    entry = load_project(str(Path(__file__).resolve().parents[2])).get_entry_point("p11_ddp")
    words = shlex.split(entry.compute_command({"gpus": "4", "overrides": "train.lr=2e-4"}, storage_dir="."))
    assert words[:6] == ["torchrun", "--standalone", "--nproc_per_node", "4", "-m", "vlmtrack.cli"]
    args = cli.build_parser().parse_args(words[6:])
    assert args.command == "train" and args.overrides == ["train.lr=2e-4"]
