from pathlib import Path

import pytest

from tests.helpers.tiny_models import build_tiny


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Random-weight tiny bundle + 160-sample dataset, built once per test session."""
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def demo_assets():
    """The embedded demo's dataset and model bundle, built once (cached under data/demo/, as the README's
    demo command leaves them)."""
    from vlmtrack.demo.assets import ensure_demo_assets

    return ensure_demo_assets(Path(__file__).resolve().parents[1] / "data" / "demo")
