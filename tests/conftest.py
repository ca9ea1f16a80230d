import pytest

from tests.helpers.tiny_models import build_tiny


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Random-weight tiny bundle + 160-sample dataset, built once per test session."""
    return build_tiny(tmp_path_factory.mktemp("tiny"))
