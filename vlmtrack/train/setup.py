"""Everything a run is built from before its first step, returned as one `Run`: the ranks, device and
precision, the frozen backbone, the data (split, golden set, feature cache) and its loaders, the speed-ups
that pay on this device, every trial's connector and optimizer, and the state a resume restores."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

import vlmtrack
from vlmtrack.config import Config, ConfigError, dump_yaml, flatten
from vlmtrack.data.dataset import CaptionDataset
from vlmtrack.data.llava import DataError
from vlmtrack.data.loader import chunks, data_workers, eval_pieces, loader, rank_shard, seeded_subset
from vlmtrack.data.pipeline import SKIPPED_RECORDS, RunData, lineage, prepare_data
from vlmtrack.files import write_jsonl
from vlmtrack.model.backbone import Backbone, load_backbone
from vlmtrack.model.connector import new_connector
from vlmtrack.model.feature_cache import BackgroundBuild, run_cache_build
from vlmtrack.model.kernels import compile_body, compile_connector, compile_tower, use_compile, use_fused_kernels
from vlmtrack.runtime import distributed as dist
from vlmtrack.runtime.device import device_and_dtype
from vlmtrack.tracking.base import NullTracker
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train.graphed import use_cuda_graphs
from vlmtrack.train.trial import Trial, check_shareable


@dataclass
class Run:
    """A run's fixed parts, and the few things that change as it goes (active trials, timing)."""
    cfg: Config  # the first trial's: everything but PER_TRIAL_KEYS is the same for all
    trials: list[Trial]
    active: list[Trial]  # the trials still training (a non-finite loss drops one)
    log: object
    device: torch.device
    dtype: torch.dtype
    backbone: Backbone
    data: RunData
    train_set: CaptionDataset
    eval_set: CaptionDataset
    steps_per_epoch: int
    total_steps: int
    workers: int
    pin: bool
    graphs_on: bool
    eval_batches: list[list[int]]  # this rank's shard of the eval split, in batches
    quick_batches: list[list[int]]
    ablation_batches: list[list[int]]
    eval_pieces: int
    start_step: int = 0
    # the feature cache being built on a thread while the first steps train live (data.feature_cache_build)
    cache_build: BackgroundBuild | None = None
    # one loader per eval batch list (full, quick, ablation), by the list's id: its workers are started once
    # and kept between evals (a full run has thousands of quick evals, each one forked its workers anew)
    eval_loaders: dict = field(default_factory=dict)
    timing: dict = field(default_factory=lambda: {"step_s": [], "data_wait_s": [], "full_eval_s": [], "golden_s": []})
    # this attempt's wall time by part (startup_s, loop_s, ablations_s): not kept in checkpoints
    wall: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return dist.is_main()

    def connectors(self) -> list[torch.nn.Module]:
        return [tr.connector for tr in self.active]

    def eval_loader(self, batches: list[list[int]]):
        if id(batches) not in self.eval_loaders:
            self.eval_loaders[id(batches)] = batches, loader(
                self.eval_set, batches, self.backbone.pad_id, self.workers, self.pin, self.cfg.eval.batch_size,
                self.eval_pieces, persistent=True)
        return self.eval_loaders[id(batches)][1]


def check_writable(out_dir: Path) -> None:
    """Fails before any training if the output directory cannot take files."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output directory '{out_dir}' is not writable ({e.strerror}): set train.output_dir") from None


def lr_lambda(warmup: int, total: int, schedule: str):
    def f(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            progress = (update - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return f


def set_up_run(trials: list[Trial], log=print) -> Run:
    check_shareable(trials)
    base = trials[0].cfg
    t, e = base.train, base.eval
    world = dist.world_size()
    if not dist.is_main():  # under torchrun every rank trains; rank 0 alone logs and writes files
        log = lambda *_: None  # noqa: E731
        for trial in trials:
            trial.tracker = NullTracker()
    if t.batch_size < world:
        raise ValueError(f"train.batch_size={t.batch_size} is the global batch: it needs one sample for each "
                         f"of the {world} ranks")
    for trial in trials:
        check_writable(trial.out_dir)
    device, dtype = device_and_dtype(base)
    torch.manual_seed(t.seed)
    # frozen towers are stored in the compute dtype
    backbone = load_backbone(base.model.llm, base.model.vision, dtype, base.model.trust_remote_code,
                             base.model.connector).to(device)
    sequences_per_step = t.batch_size // world * len(trials)
    graphs_on = use_cuda_graphs(t.cuda_graphs, device, sequences_per_step)
    workers = data_workers(base.data.num_workers, device)
    build_during = cache_built_during_training(base, device, sequences_per_step, graphs_on)
    data, train_set, eval_set, build_cache = load_data(trials, backbone, device, workers, log, build_during)
    record_skipped(trials, data, log)
    steps_per_epoch = len(train_set) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"train split has {len(train_set)} samples, fewer than train.batch_size={t.batch_size}")
    total_steps = t.train_steps or t.num_epochs * steps_per_epoch
    quick = seeded_subset(list(range(len(eval_set))), t.quick_eval_size, t.seed)
    ablation = seeded_subset(list(range(len(eval_set))), e.ablation_samples, e.ablation_seed)
    run = Run(base, trials, list(trials), log, device, dtype, backbone, data, train_set, eval_set, steps_per_epoch,
              total_steps, workers, device.type == "cuda", graphs_on,
              eval_batches=rank_batches(list(range(len(eval_set))), e.batch_size),
              quick_batches=rank_batches(quick, e.batch_size), ablation_batches=rank_batches(ablation, e.batch_size),
              eval_pieces=eval_pieces(e.batch_size, workers, data_is_live(train_set)),
              cache_build=BackgroundBuild(build_cache) if build_cache else None)
    try:
        compiled = apply_speedups(base, backbone, device, sequences_per_step, graphs_on, total_steps, log)
        for trial in trials:
            start_trial(run, trial, compiled)
        log(f"[data] train={len(train_set)} eval={len(eval_set)} buckets={data.split.bucket_counts} "
            f"split={data.split.eval_hash} golden={data.golden_hash}")
        if t.resume_from:
            resume(run)
    except BaseException:
        release(run)  # a cache build's thread would run on after the error
        raise
    return run


def record_skipped(trials: list[Trial], data: RunData, log) -> None:
    """Under data.on_bad_record=skip, what was left out, for each trial: its skipped_records.jsonl (an
    artifact of its run) and the count as the metric `data_skipped_records` (0 too, so that a run's clean
    data shows)."""
    if trials[0].cfg.data.on_bad_record != "skip":
        return
    for trial in trials:
        if dist.is_main():
            path = trial.out_dir / SKIPPED_RECORDS
            write_jsonl(path, data.skipped)
            trial.tracker.log_artifact(path)
        trial.tracker.log_metrics({"data_skipped_records": len(data.skipped)}, 0)
    if data.skipped:
        shown = "; ".join(f"id={r['id']}: {r['reason']}" for r in data.skipped[:5])
        log(f"[data] data.on_bad_record=skip left out {len(data.skipped)} record(s), listed with their reasons in "
            f"{trials[0].out_dir / SKIPPED_RECORDS}: {shown}" + (" ..." if len(data.skipped) > 5 else ""))


def rank_batches(positions: list[int], batch_size: int) -> list[list[int]]:
    """This rank's eval batches: each rank evaluates its shard, and evaluate() adds the ranks' sums up."""
    return rank_shard(chunks(positions, batch_size), dist.rank(), dist.world_size())


def data_is_live(dataset: CaptionDataset) -> bool:
    """Its workers decode JPEGs (no feature cache): eval batches then load in pieces."""
    return dataset.features is None


def load_data(trials: list[Trial], backbone: Backbone, device: torch.device, workers: int, log,
              build_during: bool = False):
    """The split, golden set and feature cache (written once, by rank 0), the train and eval sets, and with
    `build_during` the cache's build, for a thread to run (the sets then start live; else None)."""
    base = trials[0].cfg
    features, build = None, None
    with dist.main_first():
        data = prepare_data(base, backbone.tokenizer, trials[0].out_dir)
        build = run_cache_build(base, backbone, data, device, workers, log)
        if build is not None and build_during:
            log("[cache] built on a thread while the first steps train on the live tower "
                "(data.feature_cache_build=before builds it first)")
        elif build is not None:
            features, build = build(), None
    for trial in trials:
        if trial.expected_hashes and trial.expected_hashes != (data.split.eval_hash, data.golden_hash):
            raise DataError(f"{trial.name}: eval split/golden set {data.split.eval_hash}/"
                            f"{data.golden_hash} differ from the sweep's {trial.expected_hashes}: refused")

    def dataset(positions, on_bad_image="fail"):
        return CaptionDataset(data.samples, data.metas, positions, backbone.tokenizer, backbone.image_processor,
                              data.image_root, backbone.image_token_id, base.model.num_latents,
                              base.data.max_seq_len, on_bad_image, features, backbone.tower_dtype,
                              backbone.boundary_token_id)

    return data, dataset(data.split.train, base.data.on_bad_image), dataset(data.split.eval), build


def cache_built_during_training(cfg: Config, device: torch.device, sequences_per_step: int, graphs_on: bool) -> bool:
    """data.feature_cache_build: `auto` builds on a thread on one CUDA device, where the tower's batches
    overlap the first steps; before on CPU (the thread would take the training's cores), under torchrun
    (rank 0 builds while the others wait at a barrier) and with train.compile (the build would run the
    tower while it is being compiled)."""
    setting = cfg.data.feature_cache_build
    if dist.world_size() > 1:  # `during` too: every rank would build the same cache at once
        return False
    if setting != "auto":
        return setting == "during"
    may_compile = use_compile(cfg.train.compile, device, sequences_per_step, graphs_on, total_steps=10**9)
    return device.type == "cuda" and not may_compile


def take_finished_cache(run: Run, step: int) -> bool:
    """Once the background build has finished: the train and eval sets read the cache from here on. True
    when they switched (the caller restarts its loader from the same batch)."""
    build = run.cache_build
    if build is None or not build.done():
        return False
    run.cache_build = None
    if build.store is None:
        run.log(f"[cache] the feature cache's build ended early ({build.error or 'stopped'}): "
                "the run goes on with the live tower")
        return False
    run.train_set.features = run.eval_set.features = build.store
    run.eval_pieces = eval_pieces(run.cfg.eval.batch_size, run.workers, False)
    run.eval_loaders.clear()  # their workers hold the live sets: they stop, and the next eval starts new ones
    run.log(f"[cache] the feature cache is complete: cached features from step {step} on")
    return True


def release(run: Run) -> None:
    """At the run's end (or its failure): a feature-cache build stops at its next batch and keeps what it
    computed, and the eval loaders' workers stop."""
    build, run.cache_build = run.cache_build, None
    if build is not None:
        build.stop()  # its own log says whether it finished or what it kept
        if build.error:
            run.log(f"[cache] the feature cache's build failed ({build.error})")
    run.eval_loaders.clear()


def apply_speedups(cfg: Config, backbone: Backbone, device: torch.device, sequences_per_step: int, graphs_on: bool,
                   total_steps: int, log) -> bool:
    """Fused kernels and torch.compile where they pay on this device; True when compiled."""
    t = cfg.train
    compiled = use_compile(t.compile, device, sequences_per_step, graphs_on, total_steps)
    backbone.fused_ce = use_fused_kernels(backbone.llm, device, t.kernels, log, sequences_per_step, graphs_on, compiled)
    if compiled:
        backbone.compiled_body = compile_body(backbone.llm)
        compile_tower(backbone.tower)
        log("[compile] torch.compile of the LLM's decoder layers (training forward) and the vision tower's "
            "(compiles at the first step)")
    return compiled


def start_trial(run: Run, trial: Trial, compiled: bool) -> None:
    """The trial's connector (seeded alike alone or side by side), optimizer and schedule; its config,
    params and provenance tags logged."""
    m, tc, backbone, data = trial.cfg.model, trial.cfg.train, run.backbone, run.data
    torch.manual_seed(tc.seed)
    trial.connector = new_connector(m, backbone).to(run.device)
    trial.train_forward = compile_connector(trial.connector) if compiled else trial.connector
    trial.optimizer = torch.optim.AdamW(trial.connector.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                        fused=run.device.type == "cuda")
    total_updates = math.ceil(run.total_steps / tc.gradient_accum)
    trial.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trial.optimizer, lr_lambda(tc.warmup_steps, total_updates, tc.lr_schedule))
    if run.main:
        dump_yaml(trial.cfg, trial.out_dir / "config.yaml")
        # with the run from its start: a checkpoint read back from MLflow (golden, ablate, promote) is loaded
        # with its run's config, a sweep trial's included
        trial.tracker.log_artifact(trial.out_dir / "config.yaml", "config")
    trial.tracker.log_params(flatten(trial.cfg))
    trial.tracker.log_datasets(lineage(data, trial.cfg.data.data_path))
    if tc.system_metrics:
        trial.tracker.monitor_system()
    trial.tracker.set_tags({
        "split_hash": data.split.eval_hash, "train_split_hash": data.split.train_hash,
        "golden_hash": data.golden_hash, "llm": m.llm, "vision": m.vision, "device": str(run.device),
        "ranks": dist.world_size(), "vlmtrack_version": vlmtrack.__version__, "dataset": data.dataset_name,
    })
    n_params = sum(p.numel() for p in trial.connector.parameters())
    frozen = sum(p.numel() for p in backbone.llm.parameters()) + sum(p.numel() for p in backbone.tower.parameters())
    run.log(f"[model] {trial.name}: connector {n_params:,} trainable parameters; LLM + vision tower {frozen:,} frozen")


def resume(run: Run) -> None:
    """Every trial continues from its own checkpoint, at the same step."""
    for trial in run.trials:
        state = ckpt.restore_trial(trial, ckpt.resume_path(trial.out_dir, trial.cfg.train.resume_from))
        run.start_step, run.timing = state["step"], state["timing"]
    run.log(f"[resume] from step {run.start_step} (global sample index {run.start_step * run.cfg.train.batch_size})")
