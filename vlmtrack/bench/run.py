"""`vlmtrack bench`: training throughput of the real pipeline on reference shapes, printed as a table.

It builds a preset (random weights of Qwen3 + SigLIP shapes, saved and loaded through from_pretrained),
writes synthetic JPEGs to disk, and measures, in one run: the HF-style baseline (batch 4, full-vocabulary
logits, a host sync every step), the spec's batch 4 x accumulation 4 and a large micro-batch through
vlmtrack's loop (eval and logging bookkeeping on), the six-trial sweep side by side against one by one,
a full eval and a golden-64 dump. Compute is counted in model FLOPs (forward, plus the backward that
flows through the frozen LLM into the visual tokens; no weight gradients for frozen towers).
"""
from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import torch
import yaml

from vlmtrack.config import RESAMPLER, Config, load_config, set_axes
from vlmtrack.demo import synth
from vlmtrack.demo.tokenizer import build_tokenizer
from vlmtrack.model.random_init import save_random_qwen3, save_random_siglip
from vlmtrack.model.connector_io import checkpoint_dir
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train.checkpoint import load_trainer_state
from vlmtrack.train.loop import train_trials
from vlmtrack.train.steptime import step_time_stats
from vlmtrack.train.trial import Trial

PRESETS = Path(__file__).with_name("presets.yaml")  # package data: found after any install
# issue 25's targets on one H200, small preset: what a user waits for
P1_EPOCH_TARGET_S, SWEEP_TARGET_S, LONG_CAPTION_RATIO_TARGET = 90.0, 90.0, 1.3
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 datasheet; MFU is against this


def build_preset(name: str, root: Path, log=print) -> dict[str, Path]:
    preset = yaml.safe_load(PRESETS.read_text())[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # one seed for both towers: the vision tower's weights follow the LLM's in its stream
    llm = save_random_qwen3(root / "llm", build_tokenizer(0), seed=0, dtype=torch.bfloat16, device=device,
                            **preset["llm"])
    llm_params = sum(p.numel() for p in llm.parameters())
    del llm
    tower = save_random_siglip(root / "vision", dtype=torch.bfloat16, device=device, **preset["vision"])
    log(f"[bench] preset {name}: LLM {llm_params / 1e6:.0f}M, "
        f"vision {sum(p.numel() for p in tower.parameters()) / 1e6:.0f}M parameters")
    del tower
    return {"llm": root / "llm", "vision": root / "vision", "preset": preset}


def _write_chunk(args) -> None:
    root, records = args
    for record, scene in records:
        path = root / "images" / record["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        synth.render(scene, 448).save(path, quality=90)


def write_images(root: Path, n: int, workers: int = 8) -> Path:
    """N JPEGs of a realistic size (448 px, as LLaVA-Pretrain's web images are a few hundred px)."""
    pairs = synth.sample_records(n, seed=7)
    chunks = [(root, pairs[i::workers]) for i in range(workers)]
    with Pool(workers) as pool:
        pool.map(_write_chunk, chunks)
    path = root / "data.json"
    path.write_text(json.dumps([r for r, _ in pairs]))
    return path


def with_longer_captions(data: Path, repeats: int) -> Path:
    """The same records and images with each caption said `repeats` times: the synthetic captions average
    ~12 tokens, LLaVA-Pretrain's ~35 take three."""
    records = json.loads(data.read_text())
    for r in records:
        gpt = r["conversations"][1]
        gpt["value"] = " ".join([gpt["value"]] * repeats)
    path = data.with_name(f"data_x{repeats}.json")
    path.write_text(json.dumps(records))
    return path


SPEC_P1_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "stage1_align_p11.yaml"


def p1_epoch(paths: dict, root: Path, workers: int, log, records: int = 18_000, overrides: tuple = ()) -> dict:
    """One epoch of the spec's P1 run (configs/stage1_align_p11.yaml: 16,000 train / 2,000 eval, batch 4 x
    accumulation 4, quick evals, a full eval at the epoch's end, a golden-64 dump at batch 8 at each of its
    4 saves) on 18,000 synthetic records and the preset's towers: the time from the first step to the end
    of the epoch's eval and golden dumps, the user's wait for one epoch."""
    if not SPEC_P1_CONFIG.is_file():
        raise FileNotFoundError(f"{SPEC_P1_CONFIG} is missing: run the bench from a vlmtrack checkout")
    data = write_images(root / "p1_data", records, max(1, min(workers, 8)))
    out = root / "p1"
    cfg = load_config(SPEC_P1_CONFIG, [
        f"data.data_path={data}", f"data.image_folder={data.parent / 'images'}", "data.dataset_name=bench_p1",
        f"data.golden_set_path={out / 'golden.jsonl'}", f"data.num_workers={workers}",
        f"model.llm={paths['llm']}", f"model.vision={paths['vision']}", "train.num_epochs=1",
        f"train.output_dir={out}", *overrides])
    result = train_trials([Trial(cfg, JsonlTracker())], log)[0]
    b, timing = result["budget"], saved_timing(out, result["step"])
    return {"epoch_s": b["loop_wall_s"], "startup_s": b["startup_wall_s"], "steps": result["step"],
            "steps_s": sum(timing["step_s"]), "full_eval_s": sum(timing["full_eval_s"]),
            "golden_s": sum(timing["golden_s"]), "golden_dumps": len(timing["golden_s"])}


def flops_per_sample(preset: dict, seq: int = 99, label_tokens: int = 13) -> float:
    """LLM forward + input-gradient backward (2x forward), vision forward, LM head at label positions."""
    c, v = preset["llm"], preset["vision"]
    h, hd = c["hidden_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    layer = h * q + 2 * h * kv + q * h + 3 * h * c["intermediate_size"]
    llm_fwd = 2 * c["num_hidden_layers"] * (layer * seq + 2 * seq * seq * q)
    head = 2 * h * c["vocab_size"] * label_tokens
    vh = v["hidden_size"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    vision = 2 * v["num_hidden_layers"] * (patches * (4 * vh * vh + 2 * vh * v["intermediate_size"])
                                           + 2 * patches * patches * vh)
    return 2 * (llm_fwd + head) + vision


def bench_config(paths: dict, data: Path, out: Path, batch: int, steps: int, accum: int = 1,
                 workers: int = 12, kernels: str = "torch", cache: str = "off", golden_batch: int = 8,
                 graphs: str = "auto", compile: str = "off") -> Config:
    cfg = Config()
    cfg.data.eval_size = min(2000, len(json.loads(data.read_text())) // 2)
    if cfg.data.eval_size < 200:  # the CPU test's tiny data
        cfg.data.golden_size, cfg.data.golden_counts = 6, [2, 2, 2]
    cfg.data.data_path, cfg.data.image_folder = str(data), str(data.parent / "images")
    cfg.data.golden_set_path = str(out / "golden.jsonl")
    cfg.data.num_workers, cfg.data.feature_cache = workers, cache
    cfg.data.feature_cache_dir = str(data.parent / "feature_cache")
    cfg.model.llm, cfg.model.vision = str(paths["llm"]), str(paths["vision"])
    t = cfg.train
    t.output_dir, t.batch_size, t.gradient_accum, t.train_steps = str(out), batch, accum, steps
    t.save_every, t.quick_eval_steps, t.run_golden_every, t.full_eval_every = 10**9, 0, "end", "never"
    t.log_every, t.kernels, t.cuda_graphs, t.compile = max(accum, 10), kernels, graphs, compile
    cfg.eval.run_ablations = False
    cfg.eval.batch_size, cfg.eval.golden_batch_size = 256, golden_batch
    return cfg


def saved_timing(out_dir, step: int) -> dict:
    """The loop's step, data-wait, eval and golden times, as its checkpoint at `step` keeps them."""
    return load_trainer_state(checkpoint_dir(Path(out_dir), step))["timing"]


def step_rows(step_s: list[float], data_wait_s: list[float], samples_per_step: int) -> dict:
    """The table's step columns, from the loop's own step-time statistics."""
    stats = step_time_stats(step_s, data_wait_s)
    return {"samples_per_s": samples_per_step / stats["step_time_mean_s"], "step_p50_s": stats["step_time_p50_s"],
            "step_p90_s": stats["step_time_p90_s"], "data_wait_share": stats["data_wait_share"]}


def loop_throughput(cfg: Config, skip: int, log, tracker=None) -> dict:
    """One run through vlmtrack's loop; step statistics skip the first `skip` steps (warm-up). The
    full eval (all eval samples) and the golden dump run once, at the end."""
    tracker = tracker or JsonlTracker()
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    result = train_trials([Trial(cfg, tracker)], log)[0]
    tracker.finish("FINISHED")
    wall = time.perf_counter() - t0
    timing = saved_timing(cfg.train.output_dir, result["step"])
    per_step = cfg.train.batch_size * cfg.train.gradient_accum
    return {
        **step_rows(timing["step_s"][skip:], timing["data_wait_s"][skip:], per_step), "wall_s": wall,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
        # the run's mean eval and golden times, as metrics.json gives them
        "full_eval_s": result["budget"].get("full_eval_time_s", float("nan")),
        "golden_s": result["budget"].get("golden_time_s", float("nan")),
    }


def hf_style_baseline(cfg: Config, steps: int, log) -> dict:
    """The usual loop: batch 4, loss from full-vocabulary logits over the whole sequence, .item() per step."""
    from vlmtrack.data.dataset import CaptionDataset
    from vlmtrack.data.pipeline import prepare_data
    from vlmtrack.model.backbone import load_backbone
    from vlmtrack.model.connector import Connector
    from vlmtrack.data.loader import loader

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bb = load_backbone(cfg.model.llm, cfg.model.vision, dtype).to(device)
    data = prepare_data(cfg, bb.tokenizer, Path(cfg.train.output_dir))
    ds = CaptionDataset(data.samples, data.metas, data.split.train, bb.tokenizer, bb.image_processor, data.image_root,
                        bb.image_token_id, cfg.model.num_latents, cfg.data.max_seq_len)
    conn = Connector(bb.vision_dim, bb.llm_dim, cfg.model.num_latents, 2, 8).to(device)
    opt = torch.optim.AdamW(conn.parameters(), lr=1e-4)
    batches = [[(i * 4 + j) % len(ds) for j in range(4)] for i in range(steps)]
    times = []
    for batch in loader(ds, batches, bb.pad_id, cfg.data.num_workers):
        t0 = time.perf_counter()
        batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            visual = conn(bb.vision_features(batch.pixel_values))
            out = bb.llm(inputs_embeds=bb.embed(batch.input_ids, visual), attention_mask=batch.attention_mask,
                         labels=batch.labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        out.loss.item()
        times.append(time.perf_counter() - t0)
    times = times[5:]
    rows = step_rows(times, [0.0] * len(times), 4)
    return {k: rows[k] for k in ("samples_per_s", "step_p50_s", "step_p90_s")}


def sweep_time(cfg: Config, steps: int, side_by_side: bool, log) -> tuple[float, float]:
    """Wall time of the spec's six trials (2x3 grid) for `steps` steps of 4 samples, eval at the middle
    and the end, ablations on 256, golden-64 at the end; and the mean step time of the trials."""
    trials = []
    for lr in (5e-5, 1e-4, 2e-4):
        for ln in (False, True):
            tc = copy.deepcopy(cfg)
            set_axes(tc, {"lr": lr, "vision_ln": ln})
            tc.train.run_name = f"lr{lr:g}_ln{int(ln)}"
            tc.train.output_dir = str(Path(cfg.train.output_dir) / tc.train.run_name)
            tc.train.train_steps, tc.train.batch_size = steps, 4
            tc.train.eval_at_steps, tc.eval.run_ablations, tc.train.run_golden_every = [steps // 2], True, "end"
            trials.append(Trial(tc, JsonlTracker()))
    t0 = time.perf_counter()
    groups = [trials] if side_by_side else [[tr] for tr in trials]
    step_s = []
    parts = dict.fromkeys(["start-up", "steps", "full evals", "golden", "checkpoints and the rest of the loop",
                           "ablations"], 0.0)
    for group in groups:
        result = train_trials(group, log)[0]
        timing, b = saved_timing(group[0].out_dir, steps), result["budget"]
        step_s += timing["step_s"][min(5, len(timing["step_s"]) // 2):]  # past the warm-up
        loop = {"steps": sum(timing["step_s"]), "full evals": sum(timing["full_eval_s"]),
                "golden": sum(timing["golden_s"])}  # the checkpoint follows the last eval and dump
        for k, v in loop.items():
            parts[k] += v
        parts["checkpoints and the rest of the loop"] += b["loop_wall_s"] - sum(loop.values())
        parts["start-up"] += b["startup_wall_s"]
        parts["ablations"] += b.get("ablations_wall_s", 0.0)
    wall = time.perf_counter() - t0
    parts["outcomes and logging"] = wall - sum(parts.values())
    log("[bench] where the wall time went: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    return wall, statistics.mean(step_s)


def main(preset: str = "small", images: int = 5000, batch: int = 512, steps: int = 40, sweep_steps: int = 2000,
         workers: int = 12, log=print, one_by_one_steps: int = 200, parts: str = "baseline,loop,tracked,sweep,one_by_one",
         connector: str = RESAMPLER):
    """`parts` (comma-separated) picks what runs: baseline (HF-style, spec, torch kernels), loop (fused
    kernels, live tower and feature cache), tracked (the cached run again with MLflow tracking), compiled
    (train.compile=on, live and cached), sweep (the six trials side by side), one_by_one (the same six
    trials one after another, `one_by_one_steps` each, extrapolated to `sweep_steps`); every regime trains
    `connector` (model.connector), sweep_compiled (the side-by-side sweep with train.compile=on: decoder
    layers compiled inside the CUDA graph), sweep_long (the six trials side by side on the same images with
    ~35-token captions), p1 (one epoch of the spec's P1 run)."""
    parts = set(parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="vlmtrack-bench-"))
    t0 = time.perf_counter()
    paths = build_preset(preset, root / "model", log)
    data = write_images(root / "data", images, max(1, min(workers, 8)))
    log(f"[bench] {images} JPEGs written in {time.perf_counter() - t0:.0f}s (with the preset)")
    fps = flops_per_sample(paths["preset"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device), float("nan"))
    rows = []

    def add(name, r):
        tflops = r["samples_per_s"] * fps / 1e12
        rows.append({"regime": name, **r, "model_tflops": tflops, "mfu": tflops / peak})
        log(f"[bench] {name}: {r['samples_per_s']:.0f} samples/s")

    def cfg(name, b, n, **kw):
        c = bench_config(paths, data, root / name, b, n, workers=workers, **kw)
        c.model.connector = connector
        c.data.group_by_length = c.train.kernels != "torch"  # the optimised regimes pad little
        return c

    fused = "auto"  # liger-kernel on CUDA when installed; plain PyTorch elsewhere (the CPU test)
    if "baseline" in parts:
        add("HF-style: batch 4, full-vocab logits, .item() per step", hf_style_baseline(cfg("hf", 4, 0), 60, log))
        add("vlmtrack: batch 4 x accum 4 (spec), torch kernels, live tower, eager",
            loop_throughput(cfg("spec", 4, 160, accum=4, graphs="off"), 10, log))
        if torch.cuda.is_available():  # on CPU the graphs' `auto` runs the eager step above again
            add("vlmtrack: batch 4 x accum 4 (spec), live tower, CUDA graphs (+ liger where installed)",
                loop_throughput(cfg("spec_graphs", 4, 160, accum=4, kernels="auto"), 10, log))
        add(f"vlmtrack: batch {batch}, torch kernels, live tower", loop_throughput(cfg("torch", batch, steps), 5, log))
    if "compiled" in parts:  # compile warm-up happens in the skipped first steps; the wall time shows it
        add(f"vlmtrack: batch {batch}, compiled LLM + liger cross-entropy, live tower",
            loop_throughput(cfg("compiled", batch, steps, kernels=fused, compile="on", golden_batch=64), 5, log))
        add(f"vlmtrack: batch {batch}, compiled LLM + liger cross-entropy, feature cache",
            loop_throughput(cfg("compiled_cached", batch, steps, kernels=fused, cache="on", compile="on",
                                golden_batch=64), 5, log))
    if "loop" in parts:
        add(f"vlmtrack: batch {batch}, fused kernels, live tower",
            loop_throughput(cfg("fused", batch, steps, kernels=fused, golden_batch=64), 5, log))
        t1 = time.perf_counter()
        add(f"vlmtrack: batch {batch}, fused kernels, feature cache",
            loop_throughput(cfg("cached", batch, steps, kernels=fused, cache="on", golden_batch=64), 5, log))
        rows[-1]["wall_s_with_cache_build"] = time.perf_counter() - t1
    if "tracked" in parts:
        add(f"vlmtrack: batch {batch}, fused kernels, feature cache, MLflow tracking",
            loop_throughput(cfg("tracked", batch, steps, kernels=fused, cache="on", golden_batch=64), 5, log,
                            tracker=_mlflow_tracker(root)))
    summary = {"gflop_per_sample": fps / 1e9, "device": device}
    if sweep_steps and parts & {"sweep", "sweep_compiled", "sweep_long", "one_by_one"}:
        sweep_cfg = cfg("sweep", 4, sweep_steps, kernels=fused, cache="on", golden_batch=64)
        sweep_cfg.data.max_samples = 5000 if images > 5000 else 0
        sweep_cfg.data.group_by_length = False  # the spec's sample order
        summary["sweep_steps"] = sweep_steps
        if "sweep" in parts:
            summary["sweep_side_by_side_s"], side_step = sweep_time(sweep_cfg, sweep_steps, True, log)
            summary["sweep_side_by_side_step_s"] = side_step
            log(f"[bench] six trials side by side, {sweep_steps} steps: {summary['sweep_side_by_side_s']:.0f} s, "
                f"{side_step:.4f} s per step")
        if "sweep_compiled" in parts:  # train.compile=on: inductor's kernels captured inside our graph
            compiled_cfg = copy.deepcopy(sweep_cfg)
            compiled_cfg.train.compile = "on"
            compiled_cfg.train.output_dir = str(root / "sweep_compiled")
            summary["sweep_compiled_s"], summary["sweep_compiled_step_s"] = sweep_time(compiled_cfg, sweep_steps,
                                                                                       True, log)
        if "sweep_long" in parts:
            long_cfg = copy.deepcopy(sweep_cfg)
            long_cfg.data.data_path = str(with_longer_captions(data, 3))
            long_cfg.train.output_dir = str(root / "sweep_long")  # its own split (the lengths differ) and golden set
            long_cfg.data.golden_set_path = str(root / "sweep_long" / "golden.jsonl")
            summary["sweep_long_s"], summary["sweep_long_step_s"] = sweep_time(long_cfg, sweep_steps, True, log)
        if "one_by_one" in parts:
            n = min(one_by_one_steps, sweep_steps)
            alone, alone_step = sweep_time(copy.deepcopy(sweep_cfg), n, False, log)
            summary.update(sweep_one_by_one_steps=n, sweep_one_by_one_s=alone + 6 * (sweep_steps - n) * alone_step,
                           sweep_one_by_one_step_s=alone_step)
            log(f"[bench] six trials one by one, {n} steps: {alone:.0f} s, {alone_step:.4f} s per step")
    if "p1" in parts:
        summary["p1"] = p1_epoch(paths, root, workers, log)
    print_table(rows, device, preset, batch, fps, summary, connector)
    return rows, summary


def _mlflow_tracker(root: Path):
    from vlmtrack.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(experiment="bench", run_name="tracked", tracking_uri=f"sqlite:///{root}/mlflow.db")


def print_table(rows, device, preset, batch, fps, summary, connector: str = RESAMPLER) -> None:
    print(f"\n## vlmtrack bench: preset {preset} on {device}, torch {torch.__version__}, connector {connector}, "
          f"{fps / 1e9:.0f} GFLOP per sample")
    print("| regime | samples/s | step p50 s | step p90 s | data wait | TFLOP/s | MFU | peak GiB | full eval s | golden-64 s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['regime']} | {r['samples_per_s']:.0f} | {r['step_p50_s']:.4f} | {r['step_p90_s']:.4f} | "
              f"{r.get('data_wait_share', float('nan')):.1%} | {r['model_tflops']:.1f} | {r['mfu']:.1%} | "
              f"{r.get('peak_mem_gib', float('nan')):.1f} | {r.get('full_eval_s', float('nan')):.2f} | "
              f"{r.get('golden_s', float('nan')):.2f} |")
    tracked = next((r for r in rows if "MLflow" in r["regime"]), None)
    untracked = next((r for r in rows if "wall_s_with_cache_build" in r), None)
    if tracked and untracked:
        print(f"\nMLflow tracking cost: {untracked['step_p50_s']:.4f} s -> {tracked['step_p50_s']:.4f} s per step "
              f"(p50, {tracked['step_p50_s'] / untracked['step_p50_s'] - 1:+.1%}); mean "
              f"{untracked['samples_per_s']:.0f} -> {tracked['samples_per_s']:.0f} samples/s")
        print(f"feature-cache run, wall with the cache build: {untracked['wall_s_with_cache_build']:.0f} s")
    if "sweep_steps" in summary:
        total = summary["sweep_steps"]
        print(f"\nsix trials x {total} steps of 4 (eval at {total // 2} and the end on all eval samples, ablations "
              "on 256, golden-64 at the end), start-up included:")
        if "sweep_side_by_side_s" in summary:
            print(f"- side by side: {summary['sweep_side_by_side_s']:.0f} s "
                  f"({summary['sweep_side_by_side_step_s']:.4f} s per step of 6 x 4 samples; target <= "
                  f"{SWEEP_TARGET_S:.0f} s at 2000 steps)")
        if "sweep_compiled_s" in summary:
            print(f"- side by side, train.compile=on (decoder layers compiled inside the graph): "
                  f"{summary['sweep_compiled_s']:.0f} s ({summary['sweep_compiled_step_s']:.4f} s per step)")
        if "sweep_long_s" in summary:
            print(f"- side by side, captions ~3x as long (~35 tokens): {summary['sweep_long_s']:.0f} s "
                  f"({summary['sweep_long_step_s']:.4f} s per step)"
                  + (f", {summary['sweep_long_s'] / summary['sweep_side_by_side_s']:.2f}x the ~12-token sweep "
                     f"(target <= {LONG_CAPTION_RATIO_TARGET}x)" if "sweep_side_by_side_s" in summary else ""))
        if "sweep_one_by_one_s" in summary:
            n = summary["sweep_one_by_one_steps"]
            print(f"- one by one: {summary['sweep_one_by_one_s']:.0f} s"
                  + (f" (ran {n} steps per trial, extrapolated to {total} with its mean step time)" if n < total else "")
                  + f" ({summary['sweep_one_by_one_step_s']:.4f} s per step of 4 samples)")
    if "p1" in summary:
        p = summary["p1"]
        print(f"\nthe spec's P1 epoch ({p['steps']} steps of 4, {p['golden_dumps']} golden-64 dumps at batch 8, quick "
              f"evals, a full eval of 2,000): {p['epoch_s']:.0f} s from the first step to the end of its eval and "
              f"golden dumps (target <= {P1_EPOCH_TARGET_S:.0f} s): steps {p['steps_s']:.1f} s, full eval "
              f"{p['full_eval_s']:.1f} s, golden {p['golden_s']:.1f} s; start-up before it {p['startup_s']:.1f} s")
