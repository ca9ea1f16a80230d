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


def test_the_llm_and_connector_attend_without_cudnn_in_training_eval_and_generation(tiny_paths, tmp_path,
                                                                                    monkeypatch):
    """cuDNN attention plans each new shape anew (a new key length at every generated token, a new batch
    size at eval): every attention call of the LLM and the connector in a run (training steps, eval, golden
    dump) runs with that backend off; the vision tower's (a few shapes a run) and the process's setting
    afterwards are torch's own."""
    import traceback

    import torch.nn.functional as F

    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.tracking.base import JsonlTracker
    from vlmtrack.train.loop import train

    seen, sdpa = [], F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        files = [frame.filename for frame in traceback.extract_stack()]
        where = next((name for name, part in (("llm", "modeling_qwen3"), ("connector", "vlmtrack/model/connector"),
                                              ("tower", "modeling_siglip")) if any(part in f for f in files)), None)
        seen.append((where, torch.is_grad_enabled(), torch.backends.cuda.cudnn_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    cfg = tiny_config(tiny_paths, tmp_path / "out", train_steps=2, save_every=2, quick_eval_steps=0)
    cfg.eval.run_ablations = False
    cfg.train.cuda_graphs = "off"  # the CUDA-graph step keeps torch's choice: it plans each captured shape once
    assert torch.backends.cuda.cudnn_sdp_enabled()
    result = train(cfg, JsonlTracker(), log=lambda *_: None)
    assert result["budget"]["golden_time_s"] > 0 and result["budget"]["full_eval_time_s"] > 0
    assert {where for where, _, _ in seen} == {"llm", "connector", "tower"}
    for part in ("llm", "connector"):
        calls = [(grad, cudnn) for where, grad, cudnn in seen if where == part]
        assert {grad for grad, _ in calls} == {True, False}, part  # training forwards; eval and generation
        assert not any(cudnn for _, cudnn in calls), part
    assert all(cudnn for where, _, cudnn in seen if where == "tower")
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_liger_optional_backend_imports_are_off_the_console_and_its_other_warnings_stay():
    import logging

    from vlmtrack.model.kernels import LIGER_REGISTRY_LOGGER, quiet_optional_liger_backends

    logger = logging.getLogger(LIGER_REGISTRY_LOGGER)  # the logger liger-kernel's registry writes to
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        quiet_optional_liger_backends()
        quiet_optional_liger_backends()  # a second run in the process adds nothing
        # liger 0.8.5's call, word for word (backends/registry.py)
        logger.warning("Backend impl '%s' for op '%s' could not be imported: %s: %s",
                       "liger_kernel.backends._ascend.ops.rms_norm", "rms_norm", "ImportError", "no torch_npu")
        logger.warning("Registered nothing for op '%s'", "rms_norm")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Registered nothing for op 'rms_norm'"]
    assert sum(f.__name__ == "_not_an_optional_backend" for f in logger.filters) == 1
