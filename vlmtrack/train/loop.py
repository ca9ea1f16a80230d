"""The training loop, top to bottom. It trains a *set* of connectors over one frozen backbone (a
single run is a set of one): vision features once per batch, the LLM once over the stacked
sequences, losses, optimizers, checkpoints and output directories per trial."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import vlmtrack
from vlmtrack.config import Config, dump_yaml, flatten
from vlmtrack.data.dataset import CaptionDataset
from vlmtrack.data.llava import DataError
from vlmtrack.data.pipeline import prepare_data
from vlmtrack.eval.ablations import run_ablations
from vlmtrack.eval.evaluate import autocast, batch_losses, evaluate
from vlmtrack.eval.golden_gen import generate_golden, write_golden
from vlmtrack.files import write_json, write_jsonl
from vlmtrack.model.backbone import load_backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.feature_cache import store_for_run
from vlmtrack.model.kernels import compile_body, compile_connector, compile_tower, use_compile, use_fused_kernels
from vlmtrack.tracking.base import Tracker
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train import distributed as dist
from vlmtrack.train.graphed import GraphedSteps, use_cuda_graphs
from vlmtrack.train.setup import (check_writable, chunks, data_workers, device_and_dtype, eval_pieces, loader,
                                  lr_lambda, rank_shard, seeded_subset, train_batches)
from vlmtrack.train.steptime import step_time_stats


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Trial:
    """What belongs to one connector alone."""
    cfg: Config
    tracker: Tracker
    connector: Connector | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    evals: list[dict] = field(default_factory=list)
    failed: str | None = None
    expected_hashes: tuple[str, str] | None = None  # (eval split, golden set) a sweep pins for all trials
    train_forward: object = None  # the connector as the training step calls it (compiled under train.compile)

    @property
    def out_dir(self) -> Path:
        return self.cfg.output_dir


def crossed(prev: int, now: int, every: int) -> bool:
    return every > 0 and prev // every != now // every


def train(cfg: Config, tracker: Tracker, log=print) -> dict:
    return train_trials([Trial(cfg, tracker)], log)[0]


# What may differ between trials trained side by side: everything else is shared by construction.
PER_TRIAL_KEYS = {"train.lr", "train.weight_decay", "model.vision_ln", "train.run_name", "train.output_dir"}


def check_shareable(trials: list[Trial]) -> None:
    base = flatten(trials[0].cfg)
    for tr in trials[1:]:
        other = flatten(tr.cfg)
        diff = [k for k in base if k not in PER_TRIAL_KEYS and base[k] != other[k]]
        if diff:
            raise ValueError(f"trials {trials[0].cfg.train.run_name} and {tr.cfg.train.run_name} differ in "
                             f"{diff}: only {sorted(PER_TRIAL_KEYS)} may differ side by side")
    dirs = [tr.out_dir.resolve() for tr in trials]
    if len(set(dirs)) != len(dirs):
        raise ValueError("two trials share an output directory: each needs its own train.output_dir")


def train_trials(trials: list[Trial], log=print) -> list[dict]:
    check_shareable(trials)
    base = trials[0].cfg
    t, e = base.train, base.eval
    # under torchrun every rank trains, rank 0 alone logs and writes files
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    if not main:
        log = lambda *_: None  # noqa: E731
        for trial in trials:
            trial.tracker = dist.NullTracker()
    if t.batch_size < world:
        raise ValueError(f"train.batch_size={t.batch_size} is the global batch: it needs one sample for each "
                         f"of the {world} ranks")
    for trial in trials:
        check_writable(trial.out_dir)
    device, dtype = device_and_dtype(base)
    torch.manual_seed(t.seed)
    # frozen towers are stored in the compute dtype
    backbone = load_backbone(base.model.llm, base.model.vision, dtype, base.model.trust_remote_code).to(device)
    num_latents = base.model.num_latents
    sequences_per_step = t.batch_size // world * len(trials)
    graphs_on = use_cuda_graphs(t.cuda_graphs, device, sequences_per_step)
    workers, pin = data_workers(base.data.num_workers, device), device.type == "cuda"
    with dist.main_first():  # the split, golden set and feature cache are written once, by rank 0
        data = prepare_data(base, backbone.tokenizer, trials[0].out_dir)
        features = store_for_run(base, backbone, data, device, workers, log)
    for trial in trials:
        if trial.expected_hashes and trial.expected_hashes != (data.split.eval_hash, data.golden_hash):
            raise DataError(f"{trial.cfg.train.run_name}: eval split/golden set {data.split.eval_hash}/"
                            f"{data.golden_hash} differ from the sweep's {trial.expected_hashes}: refused")

    def dataset(positions, on_bad_image="fail"):
        return CaptionDataset(data.samples, data.metas, positions, backbone.tokenizer, backbone.image_processor,
                              data.image_root, backbone.image_token_id, num_latents, base.data.max_seq_len,
                              on_bad_image, features, backbone.tower_dtype)

    train_set = dataset(data.split.train, base.data.on_bad_image)
    steps_per_epoch = len(train_set) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"train split has {len(train_set)} samples, fewer than train.batch_size={t.batch_size}")
    total_steps = t.train_steps or t.num_epochs * steps_per_epoch
    total_updates = math.ceil(total_steps / t.gradient_accum)
    compiled = use_compile(t.compile, device, sequences_per_step, graphs_on, total_steps)
    backbone.fused_ce = use_fused_kernels(backbone.llm, device, t.kernels, log, sequences_per_step, graphs_on, compiled)
    if compiled:
        backbone.compiled_body = compile_body(backbone.llm)
        compile_tower(backbone.tower)
        log("[compile] torch.compile of the LLM's decoder layers (training forward) and the vision tower's "
            "(compiles at the first step)")
    # each rank evaluates its shard of the eval batches; evaluate() adds the ranks' sums up
    eval_batches = rank_shard(chunks(list(range(len(data.split.eval))), e.batch_size), rank, world)
    eval_set = dataset(data.split.eval)
    quick = rank_shard(chunks(seeded_subset(list(range(len(eval_set))), t.quick_eval_size, t.seed), e.batch_size),
                       rank, world)
    ablation = rank_shard(chunks(seeded_subset(list(range(len(eval_set))), e.ablation_samples, e.ablation_seed),
                                 e.batch_size), rank, world)
    pieces = eval_pieces(e.batch_size, workers, features is None)

    def eval_loader(sets):
        return loader(eval_set, sets, backbone.pad_id, workers, pin, e.batch_size, pieces)

    human_by_id = {s.id: s.human for s in data.samples}
    towers = {"llm": base.model.llm, "vision": base.model.vision}

    for trial in trials:
        m, tc = trial.cfg.model, trial.cfg.train
        torch.manual_seed(tc.seed)
        trial.connector = Connector(backbone.vision_dim, backbone.llm_dim, m.num_latents, m.resampler_depth,
                                    m.resampler_heads, m.resampler_ffn_mult, m.vision_ln).to(device)
        trial.train_forward = compile_connector(trial.connector) if compiled else trial.connector
        trial.optimizer = torch.optim.AdamW(trial.connector.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                            fused=device.type == "cuda")
        trial.scheduler = torch.optim.lr_scheduler.LambdaLR(
            trial.optimizer, lr_lambda(tc.warmup_steps, total_updates, tc.lr_schedule))
        if main:
            dump_yaml(trial.cfg, trial.out_dir / "config.yaml")
        trial.tracker.log_params(flatten(trial.cfg))
        trial.tracker.set_tags({
            "split_hash": data.split.eval_hash, "train_split_hash": data.split.train_hash,
            "golden_hash": data.golden_hash, "llm": m.llm, "vision": m.vision, "device": str(device), "ranks": world,
            "vlmtrack_version": vlmtrack.__version__, "dataset": data.dataset_name,
        })
        n_params = sum(p.numel() for p in trial.connector.parameters())
        frozen = sum(p.numel() for p in backbone.llm.parameters()) + sum(p.numel() for p in backbone.tower.parameters())
        log(f"[model] {trial.cfg.train.run_name}: connector {n_params:,} trainable parameters; "
            f"LLM + vision tower {frozen:,} frozen")
    log(f"[data] train={len(train_set)} eval={len(eval_set)} buckets={data.split.bucket_counts} "
        f"split={data.split.eval_hash} golden={data.golden_hash}")

    # resume: every trial continues from its own checkpoint at the same step
    step, timing = 0, {"step_s": [], "data_wait_s": [], "full_eval_s": [], "golden_s": []}
    if t.resume_from:
        for trial in trials:
            path = resume_path(trial)
            weights, _ = ckpt.load_connector_weights(path)
            trial.connector.load_state_dict(weights)
            state = ckpt.load_trainer_state(path)
            trial.optimizer.load_state_dict(state["optimizer"])
            trial.scheduler.load_state_dict(state["scheduler"])
            trial.evals = state["evals"]
            step, timing = state["step"], state["timing"]
            ckpt.restore_rng(state["rng"])
        log(f"[resume] from step {step} (global sample index {step * t.batch_size})")

    active = [tr for tr in trials if not tr.failed]
    connectors = lambda: [tr.connector for tr in active]  # noqa: E731

    def full_eval(at_step: int, sets=eval_batches, kind="eval") -> None:
        t0 = time.perf_counter()
        sums = evaluate(backbone, connectors(), eval_loader(sets), device, dtype)
        if kind == "eval":
            timing["full_eval_s"].append(time.perf_counter() - t0)
        for tr, s in zip(active, sums):
            metrics = s.metrics(kind)
            tr.tracker.log_metrics(metrics, at_step)
            if kind == "eval":
                tr.evals.append({"step": at_step, **metrics})
                log(f"[eval] {tr.cfg.train.run_name} step={at_step} loss={metrics['eval_loss']:.4f} " + " ".join(
                    f"{b}={metrics[f'eval_loss_{b}']:.4f}" for b in base.data.bucket_names if f"eval_loss_{b}" in metrics))

    def golden(at_step: int) -> None:
        if not main:  # generation is rank 0's alone; the others wait at their next collective
            return
        t0 = time.perf_counter()
        records = generate_golden(backbone, connectors(), data.golden, human_by_id, data.image_root, num_latents,
                                  e, device, dtype)
        timing["golden_s"].append(time.perf_counter() - t0)
        for tr, recs in zip(active, records):
            path = write_golden(recs, tr.out_dir, at_step, len(data.golden))
            tr.tracker.log_artifact(path, "qual")
            tr.tracker.log_table(recs, f"golden/step_{at_step}_golden{len(data.golden)}.json",
                                 image_root=data.image_root, image_column="image_relpath")

    nonfinite = torch.zeros(len(active), dtype=torch.bool, device=device)
    window_loss = torch.zeros(len(active), device=device)

    def check_finite(at_step: int) -> None:
        """Reads the on-device flag (the only host sync for it): a NaN is caught at the next log or save."""
        nonlocal nonfinite, window_loss
        bad = [flag > 0 for flag in dist.all_reduce_sums(nonfinite.cpu().double())]  # every rank agrees
        for tr, is_bad in zip(list(active), bad):
            if is_bad:
                tr.failed = (f"non-finite loss at or before step {at_step} (checked every {t.log_every} steps "
                             f"and before every save); last good checkpoint: {ckpt.latest_checkpoint(tr.out_dir)}")
                tr.tracker.finish("FAILED", tr.failed)
                log(f"[error] {tr.cfg.train.run_name}: {tr.failed}")
        if any(bad):
            keep = torch.tensor([not b for b in bad], device=device)
            active[:] = [tr for tr, is_bad in zip(active, bad) if not is_bad]
            nonfinite, window_loss = nonfinite[keep], window_loss[keep]
            if not active:
                raise NonFiniteLossError(trials[0].failed if len(trials) == 1 else "every trial has a non-finite loss")

    def save(at_step: int) -> None:
        if not main:
            return
        for tr in active:
            path = ckpt.save_checkpoint(tr.out_dir, at_step, tr.connector, tr.optimizer, tr.scheduler,
                                        {"step": at_step, "global_sample_index": at_step * t.batch_size,
                                         "evals": tr.evals, "timing": timing}, towers)
            # weights + their description go to the tracker; optimizer state stays local (resume)
            for name in ("connector.safetensors", "connector.json"):
                tr.tracker.log_artifact(path / name, f"checkpoints/{path.name}")
            tr.tracker.set_tags({"last_checkpoint": f"checkpoints/{path.name}"})

    lengths = [data.metas[i].label_len for i in data.split.train] if base.data.group_by_length else None

    def batches_from(start: int):  # up to the run's last step: the loader's workers then go idle
        return train_batches(train_set, t.batch_size, t.seed, start, backbone.pad_id, workers, pin, lengths,
                             rank, world, stop_step=start + total_steps - step)
    batches, drawn = batches_from(step), step
    bad_samples: list[dict] = []

    def next_batch():
        """The next global batch with at least one sample (this rank's slice of it may be empty) and its
        global count of supervised tokens; undecodable images are skipped and listed."""
        nonlocal batches, drawn
        while True:
            try:
                b = next(batches)
            except StopIteration:  # whole batches were skipped: read on past the planned last one
                batches = batches_from(drawn)
                b = next(batches)
            drawn += 1
            n, tokens, n_skipped = dist.all_reduce_sums([len(b), int(b.num_supervised.sum()), len(b.skipped)])
            if n_skipped:
                skipped = [s for part in dist.gather_objects(b.skipped) for s in part]
                bad_samples.extend(skipped)
                for tr in active:
                    tr.tracker.log_metrics({"data_bad_images": len(bad_samples)}, step)
                    if main:
                        write_jsonl(tr.out_dir / "bad_samples.jsonl", bad_samples)
                log(f"[data] skipped {len(skipped)} undecodable image(s), {len(bad_samples)} so far: "
                    f"{skipped[0]['reason']}")
            if n:
                return b, int(tokens)
    graphs: GraphedSteps | None = None

    def micro_step(b, tokens: int) -> torch.Tensor:
        """Adds the micro-batch's gradients, scaled by 1/tokens, and returns each connector's summed loss
        [K]: replayed from a CUDA graph where that pays (train.cuda_graphs), else eagerly."""
        nonlocal graphs
        if graphs_on and not (graphs and graphs.failed):
            if graphs is None or not graphs.serves(connectors()):  # the first step, or a trial failed
                graphs = GraphedSteps(backbone, connectors(), dtype, num_latents, log)
            losses = graphs.step(b, tokens)
            if losses is not None:
                return losses
        b.to(device)
        with autocast(device, dtype):
            losses = batch_losses(backbone, [tr.train_forward for tr in active], b).sum(1)  # [K]
        (losses / max(tokens, 1)).sum().backward()
        return losses.detach()

    window_tokens, sanity = 0, {"n": 0, "truncated": 0, "label_zero": 0, "label_tokens": 0}
    progress_every = max(1, round(total_steps * t.progress_percent))
    t_start, t_log, step_log = time.perf_counter(), time.perf_counter(), step
    while step < total_steps:
        t0 = time.perf_counter()
        n_micro = min(t.gradient_accum, total_steps - step)
        window, counts = zip(*[next_batch() for _ in range(n_micro)])
        t_data = time.perf_counter() - t0
        tokens = sum(counts)  # global: each rank's gradient is its share of the 1-rank gradient
        for b in window:
            if not len(b):
                continue
            losses = micro_step(b, tokens)
            nonfinite |= ~torch.isfinite(losses)
            window_loss += losses.float()
            sanity["n"] += len(b)
            sanity["truncated"] += int(b.truncated.sum())
            sanity["label_zero"] += int((b.num_supervised <= 1).sum())
            sanity["label_tokens"] += int(b.label_len.sum())
        window_tokens += tokens
        dist.sum_gradients(connectors())
        for tr in active:
            torch.nn.utils.clip_grad_norm_(tr.connector.parameters(), tr.cfg.train.max_grad_norm)
            tr.optimizer.step()
            tr.scheduler.step()
            tr.optimizer.zero_grad(set_to_none=graphs is None)  # a graph adds into the same .grad tensors
        prev, step = step, step + n_micro
        timing["step_s"].append(time.perf_counter() - t0)
        timing["data_wait_s"].append(t_data)

        if crossed(prev, step, t.log_every) or step == total_steps:
            check_finite(step)
            now = time.perf_counter()
            train_losses = [x / max(window_tokens, 1) for x in dist.all_reduce_sums(window_loss.cpu().double())]
            for tr, loss in zip(active, train_losses):
                tr.tracker.log_metrics({"train_loss": loss, "lr": tr.scheduler.get_last_lr()[0],
                                        "samples_per_s": (step - step_log) * t.batch_size / (now - t_log),
                                        "epoch": step / steps_per_epoch}, step)
            window_loss.zero_()
            window_tokens, t_log, step_log = 0, now, step
        if crossed(prev, step, progress_every) or step == total_steps:
            elapsed = time.perf_counter() - t_start
            log(f"[train] {100 * step / total_steps:.0f}% step={step}/{total_steps} "
                f"epoch={step / steps_per_epoch:.2f} elapsed={elapsed:.0f}s")
        epoch_end = crossed(prev, step, steps_per_epoch)
        if epoch_end:
            epoch = step // steps_per_epoch
            sanity = dict(zip(sanity, map(int, dist.all_reduce_sums(list(sanity.values())))))
            data_metrics = {"data_truncated_pct": 100 * sanity["truncated"] / max(sanity["n"], 1),
                            "data_label_zero_pct": 100 * sanity["label_zero"] / max(sanity["n"], 1),
                            "data_avg_label_tokens": sanity["label_tokens"] / max(sanity["n"], 1)}
            log(f"[data] epoch={epoch} truncated={data_metrics['data_truncated_pct']:.2f}% "
                f"label_zero={data_metrics['data_label_zero_pct']:.2f}% "
                f"avg_label_tokens={data_metrics['data_avg_label_tokens']:.1f}")
            for tr in active:
                tr.tracker.log_metrics(data_metrics, step)
            sanity = dict.fromkeys(sanity, 0)
        if t.quick_eval_steps and crossed(prev, step, t.quick_eval_steps) and step < total_steps:
            full_eval(step, quick, "quick_eval")
        every = int(t.full_eval_every) if t.full_eval_every.isdigit() else 0
        if ((epoch_end and t.full_eval_every == "epoch") or crossed(prev, step, every)
                or any(prev < s <= step for s in t.eval_at_steps) or step == total_steps):
            full_eval(step)
        saving = crossed(prev, step, t.save_every) or step == total_steps
        if saving:
            check_finite(step)
            save(step)
        if ((saving and t.run_golden_every == "save") or (epoch_end and t.run_golden_every == "epoch")
                or (step == total_steps and t.run_golden_every != "never")):
            golden(step)

    if bad_samples and main:
        for tr in active:
            tr.tracker.log_artifact(tr.out_dir / "bad_samples.jsonl")
    results = []
    ablations = []
    if e.run_ablations and active:
        ablations = run_ablations(backbone, connectors(),
                                  lambda: eval_loader(ablation),
                                  device, dtype, e.ablation_seed)
    for tr in trials:
        if tr.failed:
            results.append({"status": "FAILED", "error": tr.failed})
            continue
        abl = ablations[active.index(tr)] if ablations else {}
        if abl:
            tr.tracker.log_metrics(abl, step)
            log(f"[ablation] {tr.cfg.train.run_name} " + " ".join(f"{k}={v:.4f}" for k, v in abl.items()))
        results.append(write_metrics(tr, step, abl, timing, steps_per_epoch, data))
    return results


def resume_path(trial: Trial) -> Path:
    given = trial.cfg.train.resume_from
    path = ckpt.latest_checkpoint(trial.out_dir) if given == "latest" else Path(given)
    if path is None or not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"train.resume_from={given!r}: no checkpoint found (looked in {trial.out_dir})")
    return path


def write_metrics(tr: Trial, step: int, abl: dict, timing: dict, steps_per_epoch: int, data) -> dict:
    stats = step_time_stats(timing["step_s"], timing["data_wait_s"])
    final = tr.evals[-1] if tr.evals else {}
    budget = {}
    if stats:
        budget["est_epoch_wall_s"] = steps_per_epoch * stats["step_time_mean_s"]
    for key in ("full_eval_s", "golden_s"):
        if timing[key]:
            budget[f"{key[:-2]}_time_s"] = sum(timing[key]) / len(timing[key])
    metrics = {
        "status": "FINISHED", "step": step, "final_eval": final, "evals": tr.evals, "ablations": abl,
        "step_time": stats, "budget": budget,
        "split": {"eval_hash": data.split.eval_hash, "bucket_counts": data.split.bucket_counts,
                  "path": str(data.split.path)},
        "golden": {"path": str(data.golden_path), "hash": data.golden_hash},
    }
    if abl and final:
        w = tr.cfg.sweep.score_weight
        metrics["score"] = final["eval_loss"] - w * (abl["delta_shuffle"] + abl["delta_zero"])
    if not dist.is_main():
        return metrics
    path = tr.out_dir / "metrics.json"
    write_json(path, metrics)
    tr.tracker.log_metrics({**stats, **budget, **({"score": metrics["score"]} if "score" in metrics else {})}, step)
    tr.tracker.log_artifact(path)
    if data.split.path:
        tr.tracker.log_artifact(data.split.path, "splits")
    tr.tracker.log_artifact(data.golden_path, "golden")
    return metrics
