"""The embedded demo: a synthetic LLaVA-format dataset and a tiny model bundle, built once from a
seed, cached on disk, rebuilt only if missing. Loaded through the same paths as real data/models."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_VERSION = "v2"  # v2: blank pictures in the data, the LM answers an empty slot as blank
DEMO_SEED = 0
DEMO_SAMPLES = 6000
DEMO_IMAGE_SIZE = 64
DEMO_NUM_LATENTS = 64


@dataclass(frozen=True)
class DemoAssets:
    data_path: Path
    image_folder: Path
    llm: Path
    vision: Path


def demo_root() -> Path:
    return Path(os.environ.get("VLMTRACK_DEMO_DIR", "data/demo"))


def _assets(d: Path) -> DemoAssets:
    return DemoAssets(d / "data" / "blip_laion_cc_sbu_demo.json", d / "data" / "images", d / "bundle" / "llm",
                      d / "bundle" / "vision")


def ensure_demo_assets(root: Path | None = None, log=print) -> DemoAssets:
    """Returns the cached assets, building them first if they are missing (atomically: a build that
    dies leaves no half-written cache, and concurrent builders keep the first finished copy)."""
    from vlmtrack.demo import bundle, synth

    final = (root or demo_root()) / DEMO_VERSION
    if (final / "COMPLETE").exists():
        return _assets(final)
    work = final.parent / f".build-{os.getpid()}-{time.time_ns()}"
    work.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        synth.write_dataset(work / "data", DEMO_SAMPLES, DEMO_SEED, DEMO_IMAGE_SIZE)
        log(f"[demo] dataset: {DEMO_SAMPLES} samples in {time.perf_counter() - t0:.1f}s")
        t1 = time.perf_counter()
        bundle.build_bundle(work / "bundle", num_latents=DEMO_NUM_LATENTS, image_size=DEMO_IMAGE_SIZE, seed=DEMO_SEED)
        log(f"[demo] model bundle in {time.perf_counter() - t1:.1f}s")
        (work / "COMPLETE").write_text(f"seed={DEMO_SEED} samples={DEMO_SAMPLES} image_size={DEMO_IMAGE_SIZE}\n")
        try:
            work.rename(final)
        except OSError:
            if not (final / "COMPLETE").exists():
                shutil.rmtree(final, ignore_errors=True)
                work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _assets(final)


def fill_demo_defaults(cfg, log=print) -> None:
    """Empty data/model paths mean the embedded demo: build it if needed and point the config at it."""
    if cfg.data.data_path and cfg.model.llm and cfg.model.vision:
        return
    assets = ensure_demo_assets(log=log)
    if not cfg.data.data_path:
        cfg.data.data_path, cfg.data.image_folder = str(assets.data_path), str(assets.image_folder)
        # the golden file is named after the dataset: each demo version draws its own
        cfg.data.dataset_name = cfg.data.dataset_name or f"{assets.data_path.stem}_{DEMO_VERSION}"
    if not cfg.model.llm:
        cfg.model.llm = str(assets.llm)
    if not cfg.model.vision:
        cfg.model.vision = str(assets.vision)
