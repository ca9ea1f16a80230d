"""prepare_data's own pieces."""
import gc

import pytest

from vlmtrack.data.pipeline import gc_paused


def test_gc_paused_restores_the_collectors_state():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is left alone
    finally:
        gc.enable()
