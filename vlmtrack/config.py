"""Typed configuration: dataclasses are the single source; YAML files and `section.key=value`
overrides (CLI, MLproject parameters, Optuna trials) all end as one validated `Config`."""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    data_path: str = ""  # LLaVA-Pretrain json; "" = the embedded demo dataset
    image_folder: str = ""  # image root; "" = the embedded demo images
    dataset_name: str = ""  # names the golden file; "" = the data file's stem
    max_samples: int = 0  # 0 = all; bounds train + eval (spec 5.1)
    eval_size: int = 2000
    split_mode: str = "stratified_len"
    split_seed: int = 42
    len_buckets: list[int] = field(default_factory=lambda: [0, 10, 20, 9999])
    bucket_names: list[str] = field(default_factory=lambda: ["short", "medium", "long"])
    golden_size: int = 64
    golden_counts: list[int] = field(default_factory=lambda: [24, 20, 20])
    golden_seed: int = 123
    golden_set_path: str = ""  # "" = data/golden/<dataset>_golden<size>.jsonl
    max_seq_len: int = 512
    num_workers: int = -1  # DataLoader workers; -1 = sized to the machine (CPU cores - 1, at most 12)
    feature_cache: str = "auto"  # on | off | auto: cache the frozen tower's features when they fit the cap
    feature_cache_dir: str = ""  # "" = $VLMTRACK_CACHE/features (default ~/.cache/vlmtrack/features)
    feature_cache_max_gib: float = 20.0  # auto builds the cache only below this estimated size
    # before | during | auto: compute the missing features before the first step, or on a thread while the
    # first steps train on the live tower (the loader switches to the cache once it is complete). auto =
    # during on one CUDA device without train.compile, before otherwise (on CPU a thread would take the
    # training's cores; under torchrun, during included, rank 0 builds while the others wait)
    feature_cache_build: str = "auto"
    group_by_length: bool = False  # batches of similar length (less padding); changes the spec's order
    on_bad_image: str = "skip"  # skip | fail: a train image that cannot be decoded during training
    # error | skip: a record with bad metadata or no image file, found before the run. error refuses the data
    # file; skip (large web sets) leaves them out, lists them in skipped_records.jsonl and splits the rest
    on_bad_record: str = "error"


RESAMPLER, IDEFICS2 = "resampler", "idefics2"  # model.connector's values, and a checkpoint's connector kind


@dataclass
class ModelConfig:
    llm: str = ""  # hub id or local path; "" = the embedded demo LM
    vision: str = ""  # hub id or local path (SigLIP/CLIP); "" = the embedded demo tower
    num_latents: int = 64
    resampler_depth: int = 2
    resampler_heads: int = 8
    resampler_ffn_mult: int = 4
    vision_ln: bool = False
    # resampler (vlmtrack's own) | idefics2 (transformers' Idefics2Connector: exports as an
    # Idefics2ForConditionalGeneration, `vlmtrack export`)
    connector: str = RESAMPLER
    trust_remote_code: bool = False  # run a hub repo's own Python code: only for repos you trust


@dataclass
class TrainConfig:
    run_name: str = "demo"
    output_dir: str = ""  # "" = outputs/<run_name>
    num_epochs: int = 1
    train_steps: int = 0  # > 0 overrides num_epochs (sweep trials)
    batch_size: int = 4
    gradient_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    device: str = "auto"
    seed: int = 42
    save_every: int = 1000
    # checkpoints kept: the N newest plus the one with the best full-eval loss (0 = all). The spec's full
    # run saves ~556 times: all of them are ~180 GB on disk and ~60 GB of MLflow artifacts
    keep_checkpoints: int = 3
    full_eval_every: str = "epoch"  # epoch | never | an integer number of steps
    eval_at_steps: list[int] = field(default_factory=list)
    quick_eval_size: int = 200
    quick_eval_steps: int = 200  # 0 = no quick eval
    run_golden_every: str = "save"  # save | epoch | end | never
    progress_percent: float = 0.1  # a fraction of the run, not a percent (the spec's name): 0.1 = a line every 10%
    tqdm_disable: bool = True  # false: a tqdm bar over the steps too (the spec's runs keep it off)
    log_every: int = 10
    resume_from: str = ""
    kernels: str = "auto"  # auto (liger-kernel on CUDA when installed) | liger | torch
    cuda_graphs: str = "auto"  # auto (on CUDA below 64 sequences per step, where launches dominate) | on | off
    # auto (on CUDA from 64 sequences per step and 1,000 steps, not graphed) | on (a graphed step too) | off
    compile: str = "auto"
    # CPU, memory, disk, network and GPU utilisation/memory as MLflow system metrics, every 10 s (MLflow's
    # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides the interval)
    system_metrics: bool = True


@dataclass
class EvalConfig:
    batch_size: int = 16
    ablation_samples: int = 256
    ablation_seed: int = 0
    run_ablations: bool = True
    golden_batch_size: int = 8
    temperature: float = 0.2
    top_p: float = 0.9
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0
    generation_seed: int = 0
    # auto (a static KV cache and a CUDA-graph decode step on CUDA, generate() on CPU) | generate | static
    golden_decode: str = "auto"


@dataclass
class SweepConfig:
    lr: list[float] = field(default_factory=lambda: [5e-5, 1e-4, 2e-4])
    vision_ln: list[bool] = field(default_factory=lambda: [False, True])
    study_name: str = "vlmtrack-sweep"
    storage: str = ""  # Optuna RDB URL; "" = sqlite:///<sweep output dir>/optuna.db (one machine)
    output_dir: str = ""  # "" = outputs/<study_name>; each trial gets its own folder under it
    score_weight: float = 0.1  # score = eval_loss_end - w * (delta_shuffle + delta_zero)
    side_by_side: bool = True  # train a group of trials in one process over one backbone pass
    group_size: int = 0  # trials per group; 0 = as many as fit (all of them on CPU)
    heartbeat_s: float = 30.0  # Optuna heartbeat; a trial silent for 4x this is taken as dead and retried
    promote: bool = True  # at the end: the winner registered as a captioning model, alias champion
    registered_model: str = ""  # the registered model the winner becomes a version of; "" = study_name


@dataclass(frozen=True)
class SweepAxis:
    """One axis of the sweep grid. Every place that names the axis (study, summary, plots, report, bench)
    reads it from here, so an axis is added by one SWEEP_AXES line and its SweepConfig values field."""
    name: str  # the Optuna param name; also `winner.<name>` and the contour plot's file name
    key: str  # the config key a trial's value sets
    label: str  # its column in the summary table, CSV and JSON
    type: type  # what its values are coerced to
    values_field: str  # the SweepConfig field listing its values
    short: str  # its tag in trial run names and chart labels

    def values(self, cfg: Config) -> list:
        return list(getattr(cfg.sweep, self.values_field))

    def shown(self, value) -> str:
        return format(value, "g") if self.type is float else str(value)

    def run_tag(self, value) -> str:
        """`lr5e-05`, `ln1`: the axis in a trial's run name and folder (no `=`, no spaces)."""
        return f"{self.short}{int(value)}" if self.type is bool else f"{self.short}{self.shown(value)}"

    def chart_label(self, value) -> str:
        """`lr=5e-05`, `ln=on`: the axis under a score bar and over a golden captions column."""
        return f"{self.short}={('on' if value else 'off') if self.type is bool else self.shown(value)}"

    def log_text(self, value) -> str:
        """`lr=5e-05`, `vision_ln=True`: the axis in log lines."""
        return f"{self.name}={self.shown(value)}"


SWEEP_AXES = (
    SweepAxis("lr", "train.lr", "LR", float, "lr", "lr"),
    SweepAxis("vision_ln", "model.vision_ln", "vision_ln", bool, "vision_ln", "ln"),
)
SWEEP_AXIS_KEYS = frozenset(axis.key for axis in SWEEP_AXES)  # the config keys a trial's grid point sets


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir or f"outputs/{self.train.run_name}")


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _coerce(value, typ, where: str):
    """YAML/CLI value -> the dataclass field's type, with errors that name the key."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item_t,) = typing.get_args(typ)
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_t, f"{where}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, bool):  # YAML reads on/off (and yes/no) as booleans: the str fields mean on/off
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    raise ConfigError(f"{where}: unsupported type {typ}")


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def set_key(cfg: Config, dotted: str, value) -> None:
    """Sets `section.key` on cfg with type coercion; unknown keys name the nearest valid key."""
    if "." not in dotted:
        raise ConfigError(f"'{dotted}': keys are 'section.key' (sections: {', '.join(SECTIONS)})")
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}'" + _suggest(section, list(SECTIONS)))
    sub = getattr(cfg, section)
    types = _field_types(type(sub))
    if key not in types:
        valid = [f"{section}.{k}" for k in types]
        raise ConfigError(f"unknown config key '{dotted}'" + _suggest(f"{section}.{key}", valid))
    setattr(sub, key, _coerce(value, types[key], dotted))


def set_axes(cfg: Config, params: dict) -> None:
    """Sets a grid point (Optuna params, keyed by axis name) on cfg."""
    for axis in SWEEP_AXES:
        set_key(cfg, axis.key, axis.type(params[axis.name]))


def describe_point(params: dict) -> str:
    """`lr=5e-05 vision_ln=True`: a grid point in log lines."""
    return " ".join(axis.log_text(params[axis.name]) for axis in SWEEP_AXES)


def from_dict(raw: dict, source: str = "config") -> Config:
    cfg = Config()
    if raw is None:
        return cfg
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    for section, body in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'" + _suggest(section, list(SECTIONS)))
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        for key, value in body.items():
            try:
                set_key(cfg, f"{section}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cfg


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. train.lr=2e-4)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def user_file(path: str | Path) -> Path:
    """A file the user named, relative to the folder they ran the command from. `mlflow run <project>`
    runs its command inside the project, so a relative path is looked up first in the caller's folder
    ($PWD, which the shell sets and mlflow passes on), then in the working folder (the project's own
    files, such as the MLproject defaults configs/*.yaml)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    places = [Path(os.environ["PWD"])] if os.environ.get("PWD") else []
    places += [Path.cwd()] if Path.cwd() not in places else []
    for place in places:
        if (place / p).is_file():
            return place / p
    raise ConfigError(f"config file '{p}' does not exist (looked in {' and '.join(map(str, places))})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    if path:
        p = user_file(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        cfg = from_dict(raw, str(p))
    else:
        cfg = Config()
    for item in overrides:
        key, value = parse_override(item)
        set_key(cfg, key, yaml.safe_load(value) if value else value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    d, t, m, e = cfg.data, cfg.train, cfg.model, cfg.eval
    problems = []
    edges = d.len_buckets
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        problems.append(f"data.len_buckets must be strictly increasing with ≥2 edges, got {edges}")
    if len(d.bucket_names) != len(edges) - 1:
        problems.append(f"data.bucket_names needs {len(edges) - 1} names for {edges}, got {d.bucket_names}")
    if len(d.golden_counts) != len(edges) - 1 or sum(d.golden_counts) != d.golden_size:
        problems.append(
            f"data.golden_counts {d.golden_counts} must have one count per bucket and sum to "
            f"data.golden_size={d.golden_size}"
        )
    for name, value, choices in [
        ("data.on_bad_image", d.on_bad_image, ("skip", "fail")),
        ("data.on_bad_record", d.on_bad_record, ("error", "skip")),
        ("data.feature_cache", d.feature_cache, ("auto", "on", "off")),
        ("data.feature_cache_build", d.feature_cache_build, ("auto", "before", "during")),
        ("train.kernels", t.kernels, ("auto", "liger", "torch")),
        ("train.cuda_graphs", t.cuda_graphs, ("auto", "on", "off")),
        ("train.compile", t.compile, ("auto", "on", "off")),
        ("data.split_mode", d.split_mode, ("stratified_len", "random")),
        ("train.precision", t.precision, ("auto", "bf16", "fp32")),
        ("train.lr_schedule", t.lr_schedule, ("constant", "cosine")),
        ("train.run_golden_every", t.run_golden_every, ("save", "epoch", "end", "never")),
        ("eval.golden_decode", e.golden_decode, ("auto", "generate", "static")),
        ("model.connector", m.connector, (RESAMPLER, IDEFICS2)),
    ]:
        if value not in choices:
            problems.append(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got '{value}'")
    for name, v in [("data.eval_size", d.eval_size), ("data.max_seq_len", d.max_seq_len),
                    ("model.num_latents", m.num_latents), ("train.batch_size", t.batch_size),
                    ("train.gradient_accum", t.gradient_accum), ("eval.batch_size", e.batch_size),
                    ("train.save_every", t.save_every)]:
        if v <= 0:
            problems.append(f"{name} must be positive, got {v}")
    if d.max_samples and d.max_samples <= d.eval_size:
        problems.append(f"data.max_samples={d.max_samples} leaves no training data after data.eval_size={d.eval_size}")
    if t.keep_checkpoints < 0:
        problems.append(f"train.keep_checkpoints must be ≥ 0 (0 keeps every checkpoint), got {t.keep_checkpoints}")
    if t.lr <= 0:
        problems.append(f"train.lr must be positive, got {t.lr}")
    if t.weight_decay < 0:
        problems.append(f"train.weight_decay must be ≥ 0, got {t.weight_decay}")
    if t.full_eval_every not in ("epoch", "never") and not t.full_eval_every.isdigit():
        problems.append(f"train.full_eval_every must be epoch, never or a step count, got '{t.full_eval_every}'")
    if not 0 < t.progress_percent <= 1:
        problems.append(f"train.progress_percent must be in (0, 1], got {t.progress_percent}")
    if m.resampler_heads <= 0 or m.resampler_depth <= 0:
        problems.append("model.resampler_heads and model.resampler_depth must be positive")
    if not 0 < e.top_p <= 1 or e.temperature < 0:
        problems.append(f"eval.top_p must be in (0, 1] and eval.temperature ≥ 0, got {e.top_p}, {e.temperature}")
    problems += idefics2_problems(cfg)
    sw = cfg.sweep
    if not sw.lr or any(v <= 0 for v in sw.lr) or len(set(sw.lr)) != len(sw.lr):
        problems.append(f"sweep.lr must be a non-empty list of distinct positive rates, got {sw.lr}")
    if not sw.vision_ln or len(set(sw.vision_ln)) != len(sw.vision_ln):
        problems.append(f"sweep.vision_ln must be a non-empty list of distinct true/false, got {sw.vision_ln}")
    if sw.heartbeat_s <= 0:
        problems.append(f"sweep.heartbeat_s must be positive, got {sw.heartbeat_s}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def idefics2_problems(cfg: Config) -> list[str]:
    """Settings with no place in Idefics2's connector, so no place in its export: refused before a run."""
    m = cfg.model
    if m.connector != IDEFICS2:
        return []
    problems = []
    if m.vision_ln:
        problems.append("model.vision_ln=true has no Idefics2 equivalent (Idefics2's vision model ends in SigLIP's "
                        "own post-layernorm and its connector has no second LayerNorm; a LayerNorm of a "
                        "LayerNorm's output does not fold into it): set model.vision_ln=false")
    if m.resampler_ffn_mult != 4:
        problems.append(f"model.resampler_ffn_mult={m.resampler_ffn_mult} has no Idefics2 equivalent (Idefics2's "
                        "perceiver MLP is 4 x the LLM's width, fixed): leave it at 4")
    return problems


def check_sweep(cfg: Config) -> None:
    """A sweep grid every point of which the connector can train (a trial's point bypasses validate)."""
    if cfg.model.connector == IDEFICS2 and True in cfg.sweep.vision_ln:
        raise ConfigError(f"sweep.vision_ln={cfg.sweep.vision_ln} holds true, which model.connector=idefics2 refuses "
                          "(Idefics2 has no vision_ln): set sweep.vision_ln=[false]")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(cfg: Config) -> dict[str, object]:
    return {f"{s}.{k}": v for s, body in to_dict(cfg).items() for k, v in body.items()}


def dump_yaml(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
