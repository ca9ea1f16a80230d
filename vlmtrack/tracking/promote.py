"""Promotion: a run's best kept checkpoint (or the checkpoint given) packaged as the captioning model
(tracking/caption_model.py), logged as an MLflow logged model of its run, registered as a new version of a
registered model, and an alias (`champion`) pointed at it. Promoting again adds a version and moves the
alias; no version is ever deleted.

Which checkpoint of a run: a sweep trial's scored, final one (the score was measured there); any other
run's kept checkpoint with the best full-eval loss (the one retention always keeps), else its latest."""
from __future__ import annotations

import io
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from vlmtrack.config import SWEEP_AXES, Config, load_config
from vlmtrack.data.prompt import CAPTION_INSTRUCTION
from vlmtrack.model.connector_io import (CHECKPOINTS, META_FILE, WEIGHTS_FILE, best_checkpoint, checkpoint_name,
                                         run_dir_of)
from vlmtrack.tracking.artifacts import kept_checkpoint_steps
from vlmtrack.tracking.session import ATTEMPTS_FILE

DEFAULT_ALIAS = "champion"
MODEL_NAME = "captioner"  # the logged model's name, in the run's Logged models tab
# A local tower folder up to this size is copied into the model, which then loads on any machine (the
# embedded demo's are ~2 MB each); a larger one (Qwen3-0.6B: 1.5 GB) is recorded by its path.
BUNDLE_TOWER_MAX_BYTES = 256 * 2**20
TRIAL_TAG = "optuna_trial_number"  # on a sweep trial's run (sweep/run.py)
RUN_TAGS = ("optuna_study", "split_hash", "golden_hash")  # copied from the run onto the version


class PromoteError(ValueError):
    pass


@dataclass
class Chosen:
    """The checkpoint to promote: its files, its run's config, and where it came from."""
    folder: Path
    config: Path
    step: int
    run_id: str | None
    source: str  # the runs:/ URI or local folder it was read from
    why: str  # how it was picked


@dataclass
class Promoted:
    name: str
    version: str
    alias: str
    model_id: str
    tags: dict
    chosen: Chosen

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def run_checkpoint(client, run) -> tuple[int, str]:
    """(step, why) of the checkpoint to promote from a run's artifacts."""
    run_id = run.info.run_id
    steps = kept_checkpoint_steps(client, run_id)
    if not steps:
        raise PromoteError(f"run {run_id} has no checkpoints among its artifacts ({CHECKPOINTS}/step_N): promote a "
                           "checkpoint folder instead (vlmtrack promote outputs/<run>/checkpoints/step_N)")
    if TRIAL_TAG in run.data.tags:
        scored = client.get_metric_history(run_id, "score")
        if not scored:
            raise PromoteError(f"sweep trial run {run_id} has no score (it did not finish): promote another trial")
        step = scored[-1].step
        if step not in steps:
            raise PromoteError(f"sweep trial run {run_id} was scored at step {step}, but that checkpoint is not "
                               f"among its artifacts (kept: {steps})")
        return step, "the sweep trial's scored, final checkpoint"
    evals = [{"step": m.step, "eval_loss": m.value} for m in client.get_metric_history(run_id, "eval_loss")]
    best = best_checkpoint(steps, evals)
    if best:
        return best[0], f"the kept checkpoint with the best full-eval loss ({best[1]:.4f})"
    return steps[-1], "the latest checkpoint (no kept checkpoint has a full eval)"


def choose_checkpoint(client, source: str) -> Chosen:
    """A local checkpoint folder, a runs:/ checkpoint URI, or a run id (its checkpoint picked by run_checkpoint)."""
    from vlmtrack.eval.checkpoint_eval import fetch
    from vlmtrack.tracking.artifacts import download_checkpoint, is_artifact_uri

    if is_artifact_uri(source):
        folder, config = download_checkpoint(source)
        run_id = source.split("/")[1] if source.startswith("runs:/") else None
        return Chosen(folder, config, _meta_step(folder), run_id, source, "the checkpoint given")
    if Path(source).expanduser().exists():
        folder, config = fetch(Path(source).expanduser().resolve())
        run_id = _local_run_id(folder)
        if run_id and _find_run(client, run_id) is None:  # trained against another store: no lineage here
            run_id = None
        return Chosen(folder, config, _meta_step(folder), run_id, str(folder), "the checkpoint given")
    run = _find_run(client, source)
    if run is None:
        raise PromoteError(f"'{source}' is neither a checkpoint folder, a runs:/<run_id>/{CHECKPOINTS}/step_N URI, "
                           f"nor a run id in the tracking store {client._tracking_client.tracking_uri}")
    step, why = run_checkpoint(client, run)
    uri = f"runs:/{source}/{checkpoint_name(step)}"
    folder, config = download_checkpoint(uri)
    return Chosen(folder, config, step, source, uri, why)


def _find_run(client, run_id: str):
    """The run, or None where the store has no such run (a failing store raises)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _meta_step(folder: Path) -> int:
    return int(json.loads((folder / META_FILE).read_text())["step"])


def _local_run_id(folder: Path) -> str | None:
    """The MLflow run of a local checkpoint's training (its latest attempt), if its output dir says."""
    attempts = run_dir_of(folder) / ATTEMPTS_FILE
    return json.loads(attempts.read_text())[-1]["run_id"] if attempts.exists() else None


def version_tags(client, chosen: Chosen, cfg: Config) -> dict:
    """What the version says about where it came from: the run (trial), its sweep params, score, eval loss at
    the checkpoint's step, and the split and golden hashes it was judged on."""
    tags = {"run_id": chosen.run_id or "", "checkpoint": chosen.source, "step": chosen.step, "selected": chosen.why}
    for axis in SWEEP_AXES:
        section, key = axis.key.split(".")
        tags[axis.name] = getattr(getattr(cfg, section), key)
    if chosen.run_id:
        run = client.get_run(chosen.run_id)
        tags.update({k: run.data.tags[k] for k in (TRIAL_TAG, *RUN_TAGS) if k in run.data.tags})
        if "score" in run.data.metrics:
            tags["score"] = run.data.metrics["score"]
        at_step = [m.value for m in client.get_metric_history(chosen.run_id, "eval_loss") if m.step == chosen.step]
        if at_step:
            tags["eval_loss"] = at_step[-1]
    return {k: str(v) for k, v in tags.items()}


def tower_entry(ref: str, what: str) -> tuple[dict, Path | None]:
    """How the model finds a frozen tower (captioner.json), and the folder to bundle, if any: a local folder
    up to BUNDLE_TOWER_MAX_BYTES is bundled, a larger one is recorded by path, a hub id with its revision."""
    limit = BUNDLE_TOWER_MAX_BYTES
    path = Path(ref).expanduser()
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if size <= limit:
            return {"kind": "bundled", "ref": str(path.resolve()), "bytes": size}, path
        return {"kind": "path", "ref": str(path.resolve()),
                "why": f"{size / 2**20:.0f} MB, over the {limit / 2**20:.0f} MB bundling limit"}, None
    if path.is_absolute() or ref.startswith((".", "~")):
        raise PromoteError(f"the checkpoint's {what} '{ref}' does not exist on this machine: promote where the "
                           "towers are, or copy the folder there")
    return {"kind": "hub", "ref": ref, "revision": hub_revision(ref)}, None


def hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model: the one in the local HF cache, else the hub's current one (None offline)."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    try:
        return HfApi().model_info(repo_id).sha
    except Exception:  # noqa: BLE001 - offline: the model records no revision and loads the latest
        return None


def caption_signature(cfg: Config):
    """image (binary) -> caption (string); the golden settings as params, defaulting to the run's."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    e = cfg.eval
    params = ParamSchema([ParamSpec("max_new_tokens", "long", e.max_new_tokens),
                          ParamSpec("temperature", "double", float(e.temperature)),
                          ParamSpec("top_p", "double", float(e.top_p))])
    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                          outputs=Schema([ColSpec("string", "caption")]), params=params)


def example_image() -> bytes:
    """The input example: a small PNG of a red square on white (no file of the data set is shipped)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="red")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def requirements() -> list[str]:
    """vlmtrack's own dependency ranges (pyproject.toml, read from the installed package's metadata): the
    model's environment installs these plus the vlmtrack code it carries (code_paths)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        return [r for r in requires("vlmtrack") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        raise PromoteError("vlmtrack is not installed (pip install -e .): the model's requirements are read "
                           "from its package metadata") from None


def _model_files(chosen: Chosen, cfg: Config, tmp: Path) -> dict:
    """The model's artifacts (see caption_model.py), written under tmp."""
    from vlmtrack.tracking.caption_model import CONFIG, CONNECTOR, SPEC, TOWER_WHAT, TOWERS

    connector = tmp / CONNECTOR
    connector.mkdir()
    for name in (WEIGHTS_FILE, META_FILE):
        shutil.copy2(chosen.folder / name, connector / name)
    meta = json.loads((chosen.folder / META_FILE).read_text())
    towers, artifacts = {}, {CONNECTOR: str(connector), CONFIG: str(chosen.config)}
    for which in TOWERS:
        towers[which], bundle = tower_entry(meta[which], TOWER_WHAT[which])
        if bundle:
            artifacts[which] = str(bundle)
    spec = {"towers": towers, "instruction": CAPTION_INSTRUCTION, "checkpoint": chosen.source, "step": chosen.step,
            "run_id": chosen.run_id}
    (tmp / "captioner.json").write_text(json.dumps(spec, indent=1))
    artifacts[SPEC] = str(tmp / "captioner.json")
    return artifacts


def check_loads(model_uri: str) -> None:
    """A version is registered only once its model has loaded and captioned the input example here (MLflow's
    own check at logging only warns)."""
    import mlflow
    import pandas as pd

    try:
        captions = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"image": [example_image()]}))
        if list(captions.columns) != ["caption"] or len(captions) != 1:
            raise ValueError(f"it answered {list(captions.columns)} x {len(captions)} rows, not one caption")
    except Exception as e:  # noqa: BLE001 - whatever failed, nothing is registered
        raise PromoteError(f"the captioning model {model_uri} does not load or caption its input example, so no "
                           f"version is registered: {type(e).__name__}: {e}") from None


def promote(source: str, name: str, alias: str = DEFAULT_ALIAS, extra_tags: dict | None = None,
            log=print) -> Promoted:
    """Registers `source` (run id, runs:/ checkpoint URI or checkpoint folder) as a new version of the
    registered model `name` and points `alias` at it."""
    import mlflow
    import pandas as pd

    import vlmtrack
    from vlmtrack.tracking import caption_model_code
    from vlmtrack.tracking.report import _no_progress_bar

    if not name.strip():
        raise PromoteError("a registered model name is needed (--name NAME)")
    client = _client()
    with _no_progress_bar(), warnings.catch_warnings():
        # MLflow asks for type hints on predict(): the signature below says what the model takes
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        chosen = choose_checkpoint(client, source)
        cfg = load_config(chosen.config)
        tags = {**version_tags(client, chosen, cfg), **{k: str(v) for k, v in (extra_tags or {}).items()}}
        experiment_id = client.get_run(chosen.run_id).info.experiment_id if chosen.run_id else None
        logged = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=chosen.run_id, tags=tags,
                                                experiment_id=experiment_id)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=caption_model_code.__file__,
                                    model_id=logged.model_id, artifacts=_model_files(chosen, cfg, Path(tmp)),
                                    code_paths=[str(Path(vlmtrack.__file__).parent)],
                                    pip_requirements=requirements(), signature=caption_signature(cfg),
                                    input_example=pd.DataFrame({"image": [example_image()]}))
        check_loads(f"models:/{logged.model_id}")
        version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags).version
    client.set_registered_model_alias(name, alias, version)
    log(f"[promote] {name} version {version} <- {chosen.source} ({chosen.why}); {name}@{alias} -> version {version}")
    return Promoted(name, str(version), alias, logged.model_id, tags, chosen)


def promote_winner(cfg: Config, parent, winner: dict, log=print) -> Promoted | None:
    """The sweep's end: its winner (the lowest-score trial) becomes the new version of
    sweep.registered_model (default: the study's name) and its `champion`. A promotion that fails leaves the
    sweep's results as they are: it is said on the console and on the sweep's run, with the command that
    retries it."""
    name = cfg.sweep.registered_model or cfg.sweep.study_name
    try:
        promoted = promote(winner["mlflow_run_id"], name, DEFAULT_ALIAS, log=log,
                           extra_tags={"optuna_study": cfg.sweep.study_name, "sweep_run_id": parent.run_id})
    except Exception as e:  # noqa: BLE001 - the sweep's results stand; its end says what failed
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log(f"[promote] FAILED to promote the winner (run {winner['mlflow_run_id']}) as {name}: {error}; retry with: "
            f"vlmtrack promote {winner['mlflow_run_id']} --name {name}")
        parent.set_tags({"promotion_error": error})
        return None
    parent.set_tags({"champion": f"{promoted.uri} (version {promoted.version})"})
    return promoted
