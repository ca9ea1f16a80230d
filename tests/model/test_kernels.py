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


def test_auto_keeps_plain_kernels_where_the_step_is_launch_bound():
    # a few sequences per step: plain PyTorch even on CUDA (no liger import is attempted)
    assert use_fused_kernels(torch.nn.Linear(2, 2), torch.device("cuda"), "auto", sequences_per_step=24) is None
