import pytest
import torch

from vlmtrack.model.kernels import use_fused_kernels


def test_cpu_runs_plain_pytorch_and_liger_on_cpu_is_a_clear_error():
    llm = torch.nn.Linear(2, 2)  # never touched on the plain path
    assert use_fused_kernels(llm, torch.device("cpu"), "auto") is None
    assert use_fused_kernels(llm, torch.device("cpu"), "torch") is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        use_fused_kernels(llm, torch.device("cpu"), "liger")
    with pytest.raises(ValueError, match="use one of auto, liger, torch"):
        use_fused_kernels(llm, torch.device("cpu"), "fast")
