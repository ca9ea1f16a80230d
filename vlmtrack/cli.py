"""Thin command line: parses arguments and calls the factories in order; holds no logic.

    vlmtrack train   [--config FILE] [section.key=value ...]   one training run, tracked in MLflow
    vlmtrack sweep   [--config FILE] [section.key=value ...]   the LR x vision_ln sweep (Optuna + nested runs)
    vlmtrack ablate  CHECKPOINT [section.key=value ...]         vision ablations on a saved connector
    vlmtrack golden  CHECKPOINT [section.key=value ...]         golden captions from a saved connector
    vlmtrack bench   [--preset small|large] ...                 training throughput on reference shapes
    vlmtrack build-demo                                         build the embedded demo assets
"""
from __future__ import annotations

import argparse
import shlex
import sys

from vlmtrack.config import ConfigError, load_config
from vlmtrack.data.llava import DataError
from vlmtrack.model.backbone import ModelLoadError


def _overrides(args) -> list[str]:
    # MLproject passes all overrides as one string parameter; by hand they come as separate words
    return [item for word in args.overrides for item in shlex.split(word)]


def _train(args) -> None:
    from vlmtrack.demo.assets import fill_demo_defaults
    from vlmtrack.tracking.session import log_summary, tracked_run
    from vlmtrack.train.loop import train

    cfg = load_config(args.config, _overrides(args))
    fill_demo_defaults(cfg)
    with tracked_run(cfg, args.config, experiment=args.experiment) as tracker:
        print(f"[mlflow] run {tracker.run_id}")
        metrics = train(cfg, tracker)
        log_summary(tracker, cfg, metrics)
    print(f"[done] metrics: {cfg.output_dir / 'metrics.json'}")


def _ablate(args) -> None:
    from vlmtrack.eval.ablations import run_ablations
    from vlmtrack.eval.checkpoint_eval import ablation_batches, eval_dataset, load_checkpoint
    from vlmtrack.train.setup import loader
    from vlmtrack.tracking.session import tracked_run

    lc = load_checkpoint(args.checkpoint, _overrides(args))
    dataset, batches = eval_dataset(lc), ablation_batches(lc)
    result = run_ablations(lc.backbone, [lc.connector], lambda: loader(dataset, batches, lc.backbone.pad_id, 0),
                           lc.device, lc.dtype, lc.cfg.eval.ablation_seed)[0]
    for k, v in result.items():
        print(f"{k}={v:.4f}")
    if not args.no_track:
        lc.cfg.train.run_name = f"ablate-{lc.cfg.train.run_name}-step{lc.step}"
        with tracked_run(lc.cfg, training=False, experiment=args.experiment) as tracker:
            tracker.set_tags({"checkpoint": args.checkpoint, "split_hash": lc.data.split.eval_hash})
            tracker.log_metrics(result, lc.step)


def _golden(args) -> None:
    from vlmtrack.eval.checkpoint_eval import load_checkpoint
    from vlmtrack.eval.golden_gen import generate_golden, write_golden
    from vlmtrack.tracking.session import tracked_run

    lc = load_checkpoint(args.checkpoint, _overrides(args))
    human = {s.id: s.human for s in lc.data.samples}
    records = generate_golden(lc.backbone, [lc.connector], lc.data.golden, human, lc.data.image_root,
                              lc.cfg.model.num_latents, lc.cfg.eval, lc.device, lc.dtype)[0]
    path = write_golden(records, lc.cfg.output_dir, lc.step, len(records))
    for r in records[:10]:
        print(f"id={r['id']} | gt={r['gt_text']} | pred={r['pred_text']}")
    print(f"[golden] {len(records)} captions -> {path}")
    if not args.no_track:
        lc.cfg.train.run_name = f"golden-{lc.cfg.train.run_name}-step{lc.step}"
        with tracked_run(lc.cfg, training=False, experiment=args.experiment) as tracker:
            tracker.set_tags({"checkpoint": args.checkpoint, "golden_hash": lc.data.golden_hash})
            tracker.log_artifact(path, "qual")
            tracker.log_table(records, f"golden/step_{lc.step}_golden{len(records)}.json",
                              image_root=lc.data.image_root, image_column="image_relpath")


def _sweep(args) -> None:
    from vlmtrack.demo.assets import fill_demo_defaults
    from vlmtrack.model.backbone import load_tokenizer
    from vlmtrack.sweep.run import run_sweep
    from vlmtrack.tracking.mlflow_tracker import MlflowTracker
    from vlmtrack.tracking.session import tracked_run

    cfg = load_config(args.config, _overrides(args))
    fill_demo_defaults(cfg)
    cfg.train.run_name = cfg.sweep.study_name
    with tracked_run(cfg, args.config, training=False, experiment=args.experiment) as parent:
        exp_id = parent.experiment_id
        run_sweep(cfg, parent, lambda name, parent_id: MlflowTracker(run_name=name, parent_run_id=parent_id,
                                                                     experiment_id=exp_id),
                  load_tokenizer(cfg.model.llm, cfg.model.trust_remote_code))


def _bench(args) -> None:
    from vlmtrack.bench.run import main as bench
    from vlmtrack.tracking.mlflow_tracker import MlflowTracker

    rows, summary = bench(args.preset, args.images, args.batch, args.steps, args.sweep_steps, args.workers)
    if not args.no_track:
        tracker = MlflowTracker(experiment=args.experiment or "vlmtrack-bench", run_name=f"bench-{args.preset}")
        tracker.log_params({k: v for k, v in vars(args).items() if k != "func"})
        tracker.set_tags({"device": summary["device"]})
        tracker.log_table(rows, "bench/table.json")
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)}, 0)
        tracker.finish()


def _build_demo(args) -> None:
    from vlmtrack.demo.assets import ensure_demo_assets

    assets = ensure_demo_assets()
    print(f"data:   {assets.data_path}\nimages: {assets.image_folder}\nllm:    {assets.llm}\nvision: {assets.vision}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmtrack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="one training run, tracked in MLflow")
    train.add_argument("--config", default=None, help="YAML config (default: the embedded demo)")
    train.set_defaults(func=_train)
    sweep = sub.add_parser("sweep", help="the LR x vision_ln grid as an Optuna study of nested MLflow runs")
    sweep.add_argument("--config", default=None, help="YAML config with a sweep section (default: the demo)")
    sweep.set_defaults(func=_sweep)
    for name, func, text in [("ablate", _ablate, "vision ablations on a saved connector checkpoint"),
                             ("golden", _golden, "golden-set captions from a saved connector checkpoint")]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("checkpoint", help="checkpoints/step_N folder or runs:/<run_id>/checkpoints/step_N")
        cmd.add_argument("--no-track", action="store_true", help="print only, log nothing to MLflow")
        cmd.set_defaults(func=func)
    for cmd in (train, sweep, *[sub.choices[n] for n in ("ablate", "golden")]):
        cmd.add_argument("--experiment", default=None, help="MLflow experiment (default: vlmtrack)")
        cmd.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-4 model.vision_ln=true")
    bench = sub.add_parser("bench", help="training throughput on reference shapes (prints a table)")
    bench.add_argument("--preset", default="small", choices=["small", "large", "tiny"])
    bench.add_argument("--images", type=int, default=5000)
    bench.add_argument("--batch", type=int, default=128)
    bench.add_argument("--steps", type=int, default=40)
    bench.add_argument("--sweep-steps", type=int, default=200)
    bench.add_argument("--workers", type=int, default=12)
    bench.add_argument("--experiment", default=None)
    bench.add_argument("--no-track", action="store_true")
    bench.set_defaults(func=_bench)
    demo = sub.add_parser("build-demo", help="build (once) the embedded demo dataset and model bundle")
    demo.set_defaults(func=_build_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, ModelLoadError) as e:
        print(f"vlmtrack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlmtrack: interrupted; the run is marked KILLED, checkpoints written so far are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
