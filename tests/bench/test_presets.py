"""The bench presets ship inside the package, so `vlmtrack bench` finds them after a non-editable install."""
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import yaml

from vlmtrack.bench import run as bench

REPO = Path(__file__).resolve().parents[2]


def test_presets_are_package_data():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vlmtrack"]
    assert any(fnmatch("bench/presets.yaml", g) for g in globs), globs
    presets = resources.files("vlmtrack.bench") / "presets.yaml"
    assert presets.is_file() and Path(str(presets)) == bench.PRESETS
    assert {"small", "large", "tiny"} <= set(yaml.safe_load(presets.read_text()))
