"""Thin command line: parses arguments and calls the factories in order; holds no logic."""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback

from vlmtrack.config import IDEFICS2, RESAMPLER, ConfigError, check_sweep, load_config

DESCRIPTION = """Train and judge the connector of a vision-language model (stage-1 alignment), tracked in MLflow.

    vlmtrack train   [--config FILE] [section.key=value ...]   one training run, tracked in MLflow
    vlmtrack sweep   [--config FILE] [section.key=value ...]   the LR x vision_ln sweep (Optuna + nested runs)
    vlmtrack ablate  CHECKPOINT [section.key=value ...]         vision ablations on a saved connector
    vlmtrack golden  CHECKPOINT [section.key=value ...]         golden captions from a saved connector
    vlmtrack export  CHECKPOINT OUT_DIR [--log]                 an idefics2 checkpoint as a transformers model folder
    vlmtrack report  [RUN_ID] [--experiment NAME]               eval loss, golden items, sweep table from MLflow
    vlmtrack promote RUN_ID|CHECKPOINT --name NAME [--alias A]  register a checkpoint as a captioning model version
    vlmtrack bench   [--preset small|large] ...                 training throughput on reference shapes
    vlmtrack build-demo                                         build the embedded demo assets

An error prints one line (vlmtrack: error: ...), exit 1, or 2 for a bad command line or config;
`vlmtrack --debug COMMAND ...` prints the full traceback instead. Ctrl-C exits 130.
"""


# `vlmtrack sweep` with no --config runs what `mlflow run . -e sweep` runs: MLproject's `config` default is
# this file too (tests/test_cli.py holds them equal)
DEFAULT_SWEEP_CONFIG = "configs/demo_sweep.yaml"


def _overrides(args) -> list[str]:
    # MLproject passes all overrides as one string parameter; by hand they come as separate words
    return [item for word in args.overrides for item in shlex.split(word)]


def _train(args) -> None:
    from vlmtrack.data.pipeline import check_inputs
    from vlmtrack.demo.assets import fill_demo_defaults
    from vlmtrack.runtime import distributed as dist
    from vlmtrack.sweep.score import composite_score
    from vlmtrack.tracking.base import NullTracker
    from vlmtrack.tracking.session import log_summary, tracked_run
    from vlmtrack.train.loop import train

    cfg = load_config(args.config, _overrides(args))
    dist.init_from_env(cfg.train.device)  # under torchrun: join the ranks; alone: nothing
    try:
        with dist.main_first():  # rank 0 builds the demo assets, if needed, before the others look
            fill_demo_defaults(cfg)
        check_inputs(cfg)  # before the MLflow run: a bad path or record leaves no FAILED run behind
        if not dist.is_main():  # rank 0 holds the one MLflow run and writes every file
            train(cfg, NullTracker(), score=composite_score)
            return
        with tracked_run(cfg, args.config, experiment=args.experiment) as tracker:
            print(f"[mlflow] run {tracker.run_id}" + (f" ({dist.world_size()} ranks)" if dist.active() else ""))
            metrics = train(cfg, tracker, score=composite_score)
            log_summary(tracker, cfg, metrics)
        print(f"[done] metrics: {cfg.output_dir / 'metrics.json'}")
    finally:
        dist.teardown()


def _load_checkpoint(args):
    """A checkpoint folder, or one downloaded from MLflow first (runs:/...)."""
    from pathlib import Path

    from vlmtrack.eval.checkpoint_eval import fetch, load_checkpoint
    from vlmtrack.tracking.artifacts import download_checkpoint, is_artifact_uri

    uri = args.checkpoint
    folder, config = download_checkpoint(uri) if is_artifact_uri(uri) else fetch(Path(uri))
    return load_checkpoint(folder, config, _overrides(args))


def _ablate(args) -> None:
    from vlmtrack.data.loader import loader
    from vlmtrack.eval.ablations import run_ablations
    from vlmtrack.eval.checkpoint_eval import ablation_batches, eval_dataset
    from vlmtrack.tracking.session import tracked_run

    lc = _load_checkpoint(args)
    dataset, batches = eval_dataset(lc), ablation_batches(lc)
    result = run_ablations(lc.backbone, [lc.connector], loader(dataset, batches, lc.backbone.pad_id, 0),
                           lc.device, lc.dtype, lc.cfg.eval.ablation_seed)[0]
    for k, v in result.items():
        print(f"{k}={v:.4f}")
    if not args.no_track:
        lc.cfg.train.run_name = f"ablate-{lc.cfg.train.run_name}-step{lc.step}"
        with tracked_run(lc.cfg, training=False, experiment=args.experiment) as tracker:
            tracker.set_tags({"checkpoint": args.checkpoint, "split_hash": lc.data.split.eval_hash})
            tracker.log_metrics(result, lc.step)


def _golden(args) -> None:
    from vlmtrack.data.golden import QUAL_DIR
    from vlmtrack.tracking.golden_tables import GoldenTables
    from vlmtrack.eval.golden_gen import generate_golden, write_golden
    from vlmtrack.tracking.session import tracked_run

    lc = _load_checkpoint(args)
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
            tracker.log_artifact(path, QUAL_DIR)
            GoldenTables().log(tracker, records, lc.step, lc.data.image_root)


def _export(args) -> None:
    from pathlib import Path

    from vlmtrack.eval.checkpoint_eval import fetch
    from vlmtrack.model.idefics2_export import export_idefics2
    from vlmtrack.tracking.artifacts import download_checkpoint, export_run_id, is_artifact_uri, log_export

    uri = args.checkpoint
    if args.log:
        export_run_id(uri)  # a local folder names no run: said before the export, not after
    folder, config = download_checkpoint(uri) if is_artifact_uri(uri) else fetch(Path(uri))
    export_idefics2(folder, Path(args.out_dir), load_config(config).model.trust_remote_code)
    if args.log:
        print(f"[export] logged as {log_export(uri, Path(args.out_dir))}")


def _sweep(args) -> None:
    from vlmtrack.data.pipeline import check_inputs
    from vlmtrack.demo.assets import fill_demo_defaults
    from vlmtrack.model.backbone import load_tokenizer
    from vlmtrack.sweep.run import run_sweep
    from vlmtrack.tracking.mlflow_tracker import MlflowTracker
    from vlmtrack.tracking.promote import promote_winner
    from vlmtrack.tracking.session import sweep_parent

    cfg = load_config(args.config, _overrides(args))
    check_sweep(cfg)
    fill_demo_defaults(cfg)
    check_inputs(cfg)  # before the sweep's MLflow run
    cfg.train.run_name = cfg.sweep.study_name
    on_winner = (lambda row, parent: promote_winner(cfg, parent, row)) if cfg.sweep.promote else None
    run_sweep(cfg, sweep_parent(cfg, args.config, args.experiment),
              lambda name, parent_id: MlflowTracker(run_name=name, parent_run_id=parent_id),  # beside its parent
              load_tokenizer(cfg.model.llm, cfg.model.trust_remote_code), on_winner=on_winner)


def _bench(args) -> None:
    from vlmtrack.bench.run import main as bench

    rows, summary = bench(args.preset, args.images, args.batch, args.steps, args.sweep_steps, args.workers,
                          one_by_one_steps=args.one_by_one_steps, parts=args.parts, connector=args.connector)
    if not args.no_track:
        from vlmtrack.tracking.mlflow_tracker import MlflowTracker

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


def _report(args) -> None:
    from vlmtrack.tracking.report import build_report, log_report

    report = build_report(args.run_id or None, args.experiment or None, args.sweep or None,
                          with_sweep=not args.no_sweep, items=args.items)
    print(report.text, end="")
    if not args.no_track:
        print(f"[report] {log_report(report)} logged on run {report.run_id}")


def _promote(args) -> None:
    from vlmtrack.tracking.promote import promote

    promoted = promote(args.source, args.name, args.alias)
    print(f"[promote] load it: mlflow.pyfunc.load_model('{promoted.uri}'); serve it: mlflow models serve -m "
          f"'{promoted.uri}' --env-manager local")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmtrack", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    # also accepted after the command (`vlmtrack train --debug`); SUPPRESS keeps a subcommand from
    # resetting the flag given before it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, print the full traceback instead of one line")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback instead of one line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                         help="one of these; `vlmtrack COMMAND --help` lists its options")
    train = sub.add_parser("train", parents=[debug], help="one training run, tracked in MLflow")
    train.add_argument("--config", default=None, help="YAML config (default: the embedded demo)")
    train.set_defaults(func=_train)
    sweep = sub.add_parser("sweep", parents=[debug],
                           help="the LR x vision_ln grid as an Optuna study of nested MLflow runs")
    sweep.add_argument("--config", default=DEFAULT_SWEEP_CONFIG,
                       help=f"YAML config with a sweep section (default: the demo's, {DEFAULT_SWEEP_CONFIG})")
    sweep.set_defaults(func=_sweep)
    for name, func, text in [("ablate", _ablate, "vision ablations on a saved connector checkpoint"),
                             ("golden", _golden, "golden-set captions from a saved connector checkpoint")]:
        cmd = sub.add_parser(name, parents=[debug], help=text)
        cmd.add_argument("checkpoint", help="checkpoints/step_N folder, runs:/<run_id>/checkpoints/step_N or models:/<logged model id>")
        cmd.add_argument("--no-track", action="store_true", help="print only, log nothing to MLflow")
        cmd.set_defaults(func=func)
    for cmd in (train, sweep, *[sub.choices[n] for n in ("ablate", "golden")]):
        cmd.add_argument("--experiment", default=None, help="MLflow experiment (default: vlmtrack)")
        cmd.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-4 model.vision_ln=true")
    export = sub.add_parser("export", parents=[debug],
                            help="a model.connector=idefics2 checkpoint as an Idefics2ForConditionalGeneration "
                                 "+ processor folder (transformers alone loads it)")
    export.add_argument("checkpoint", help="checkpoints/step_N folder, runs:/<run_id>/checkpoints/step_N, or a "
                                           "registered version: models:/NAME@ALIAS or models:/NAME/VERSION")
    export.add_argument("out_dir", help="the folder to write (new or empty)")
    export.add_argument("--log", action="store_true",
                        help="also log the export on the checkpoint's run, as export/step_N (runs:/ checkpoints)")
    export.set_defaults(func=_export)
    report = sub.add_parser("report", parents=[debug],
                            help="a run's eval loss by bucket, golden items and the sweep table, from MLflow alone")
    report.add_argument("run_id", nargs="?", default=None,
                        help="the run to report on (a sweep run reports on its winner); default: the latest "
                             "finished top-level training run of --experiment")
    report.add_argument("--experiment", default=None,
                        help="where to find the latest training run (default: vlmtrack, or MLFLOW_EXPERIMENT_NAME)")
    report.add_argument("--sweep", default=None, help="the sweep's parent run id (default: the run's own sweep, "
                                                      "else the experiment's latest finished sweep)")
    report.add_argument("--no-sweep", action="store_true", help="leave the sweep table out")
    report.add_argument("--items", type=int, default=10, help="how many golden items to show (default: 10)")
    report.add_argument("--no-track", action="store_true", help="print only, do not log report.md on the run")
    report.set_defaults(func=_report)
    promote = sub.add_parser("promote", parents=[debug],
                             help="register a run's best kept checkpoint (or the one given) as a new version of a "
                                  "captioning model and point an alias at it")
    promote.add_argument("source", help="a run id (a sweep trial: its scored, final checkpoint; another run: its kept "
                                        "checkpoint with the best full-eval loss), runs:/<run_id>/checkpoints/step_N, "
                                        "or a checkpoints/step_N folder")
    promote.add_argument("--name", required=True, help="the registered model (created on its first version)")
    promote.add_argument("--alias", default="champion", help="the alias moved to the new version (default: champion)")
    promote.set_defaults(func=_promote)
    bench = sub.add_parser("bench", parents=[debug], help="training throughput on reference shapes (prints a table)")
    bench.add_argument("--preset", default="small", choices=["small", "large", "tiny"],
                       help="model shapes: small (Qwen3-0.6B + SigLIP-base), large (Qwen3-1.7B + "
                            "SigLIP-so400m), tiny (tests)")
    bench.add_argument("--images", type=int, default=5000, help="synthetic JPEGs written to disk and trained on")
    bench.add_argument("--batch", type=int, default=512, help="micro-batch of the large-batch regimes")
    bench.add_argument("--steps", type=int, default=40, help="training steps of the large-batch regime")
    bench.add_argument("--sweep-steps", type=int, default=2000,
                       help="steps of 4 samples per trial of the six-trial sweep, run whole side by side")
    bench.add_argument("--one-by-one-steps", type=int, default=200,
                       help="steps per trial the one-by-one sweep runs before extrapolating to --sweep-steps")
    bench.add_argument("--parts", default="baseline,loop,tracked,sweep,one_by_one",
                       help="what to measure, comma-separated: baseline (HF-style, spec, torch kernels), loop "
                            "(fused kernels, live tower and feature cache), tracked (the cached run with MLflow "
                            "tracking), compiled (train.compile=on, live and cached), sweep (six trials side by "
                            "side), sweep_compiled (the same with train.compile=on inside the graph), one_by_one (the "
                            "six one after another, extrapolated), sweep_long (the six on "
                            "~35-token captions), p1 (one epoch of the spec's P1 run)")
    bench.add_argument("--workers", type=int, default=12, help="data-loader worker processes")
    bench.add_argument("--connector", default=RESAMPLER, choices=[RESAMPLER, IDEFICS2],
                       help="model.connector of every vlmtrack regime (the HF-style baseline keeps the resampler)")
    bench.add_argument("--experiment", default=None, help="MLflow experiment (default: vlmtrack-bench)")
    bench.add_argument("--no-track", action="store_true", help="print only, log nothing to MLflow")
    bench.set_defaults(func=_bench)
    demo = sub.add_parser("build-demo", parents=[debug],
                          help="build (once) the embedded demo dataset and model bundle")
    demo.set_defaults(func=_build_demo)
    return p


def _version() -> str:
    from vlmtrack import __version__

    return __version__


USAGE_ERRORS = (ConfigError,)  # a bad config or override: exit 2, as argparse does for a bad command line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("vlmtrack: interrupted; a tracked run is marked KILLED, checkpoints written so far are kept",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error ends as one line (or a traceback with --debug)
        if args.debug:
            traceback.print_exc()
        else:
            print(f"vlmtrack: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, USAGE_ERRORS) else 1
    return 0


def _one_line(e: Exception) -> str:
    """vlmtrack's own errors (ConfigError, DataError, ModelLoadError, ReportError, ...) are written to be
    read as they are, some listing every bad item one per line; anything else is its type and first line,
    with where to look for more. Told apart by module, so that `--help` need not import torch."""
    if type(e).__module__.startswith("vlmtrack."):
        return str(e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first} (vlmtrack --debug ... shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
