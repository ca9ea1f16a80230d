"""Fused kernels for the frozen LLM on CUDA (liger-kernel): RMSNorm, SwiGLU and RoPE patched into the
model, and a fused linear cross-entropy that never materialises the [tokens, vocab] logits. On CPU, or
where liger-kernel is not installed, the plain PyTorch path runs (the one the tests cover)."""
from __future__ import annotations

import logging
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNEL_CHOICES = ("auto", "liger", "torch")
# Measured on an H100 (docs/PERFORMANCE.md): liger's Triton kernels cost more to launch than PyTorch's,
# so at a few sequences per step (launch-bound) they are slower: batch 4, 0.179 s vs 0.138 s per step;
# 6 x 4 stacked, 0.216 vs 0.183; at 256, 0.232 vs 0.421. `auto` uses them from this many sequences on.
FUSED_MIN_SEQUENCES = 64


def use_fused_kernels(llm, device: torch.device, setting: str, log=print,
                      sequences_per_step: int = FUSED_MIN_SEQUENCES, graphed: bool = False, compiled: bool = False):
    """Patches `llm` in place and returns the fused loss (lm_head weight, hidden, targets) -> per-token
    losses, or None for plain PyTorch. `auto` = liger on CUDA when installed and the LLM sees at least
    FUSED_MIN_SEQUENCES sequences per forward, or at any size when the step is a replayed CUDA graph: launches
    then cost nothing, and the unfused norms, activations and rotations were most of the graph's GPU time
    (6 x 4 sequences: 59 ms a step, two thirds of it elementwise kernels; docs/PERFORMANCE.md)."""
    if setting not in KERNEL_CHOICES:
        raise ValueError(f"train.kernels={setting!r}: use one of {', '.join(KERNEL_CHOICES)}")
    launch_bound = sequences_per_step < FUSED_MIN_SEQUENCES and not graphed
    if setting == "torch" or (setting == "auto" and (device.type != "cuda" or launch_bound)):
        _unpatch_modeling(llm)  # an earlier liger run in this process leaves none of its kernels here
        return None
    if device.type != "cuda":
        raise ValueError("train.kernels=liger needs a CUDA device: use train.kernels=auto or torch on CPU")
    quiet_optional_liger_backends()
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except ImportError:
        if setting == "liger":
            raise ValueError("train.kernels=liger but liger-kernel is not installed: pip install "
                             "'vlmtrack[cuda]', or set train.kernels=torch") from None
        log("[kernels] liger-kernel not installed: plain PyTorch kernels (pip install 'vlmtrack[cuda]')")
        return None
    if compiled:  # inductor fuses the norms, RoPE and SwiGLU itself (and liger's RMSNorm does not trace)
        _unpatch_modeling(llm)
        log("[kernels] liger-kernel: fused linear cross-entropy; norms, RoPE and SwiGLU fused by torch.compile")
        return LigerFusedLinearCrossEntropyLoss(reduction="none")
    # the loss is ours (at label positions only), so liger's own model-forward loss is left off
    module = sys.modules[type(llm).__module__]
    _PRISTINE.setdefault(module.__name__, dict(vars(module)))
    _apply_liger_kernel_to_instance(model=llm, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    # liger also swaps the modeling module's classes, process-wide; this model's modules are patched as
    # instances, so the classes go back at once (models built later are plain). Its RoPE is a function the
    # attention looks up at each call: that stays until a plain run undoes it.
    _unpatch_modeling(llm, classes_only=True)
    log(f"[kernels] liger-kernel: fused RMSNorm, SwiGLU, RoPE and linear cross-entropy on {llm.config.model_type}")
    return LigerFusedLinearCrossEntropyLoss(reduction="none")


LIGER_REGISTRY_LOGGER = "liger_kernel.backends.registry"


def _not_an_optional_backend(record: logging.LogRecord) -> bool:
    """liger-kernel (0.8) looks, op by op, for implementations in other vendors' backends and logs each one
    that does not import as a warning ("Backend impl '...' could not be imported: ImportError ..."): expected
    wherever those backends are not installed, and it read like a failure on every GPU run. liger keeps them
    in `liger_kernel.backends.registry.get_discovery_failures()`; every other liger warning still shows."""
    return not str(record.msg).startswith("Backend impl")


def quiet_optional_liger_backends() -> None:
    logging.getLogger(LIGER_REGISTRY_LOGGER).addFilter(_not_an_optional_backend)  # once: a set of filters


_PRISTINE: dict[str, dict] = {}  # modeling module name -> its namespace before liger first patched it


def _unpatch_modeling(llm, classes_only: bool = False) -> None:
    """Puts back what liger replaced in `llm`'s modeling module (a no-op where it never patched)."""
    module = sys.modules[type(llm).__module__]
    for name, value in _PRISTINE.get(module.__name__, {}).items():
        if getattr(module, name, None) is not value and (isinstance(value, type) or not classes_only):
            setattr(module, name, value)


# Measured on an H200 (docs/PERFORMANCE.md), small preset, batch 384, end to end: compiled layers take
# 35-60 ms off a 0.3-0.4 s step (+10-14% samples/s) and cost ~10-30 s of compiling (one layer, then once
# more for dynamic lengths and batch sizes), so they pay after a few hundred steps; `auto` waits for 1,000.
COMPILE_MIN_STEPS = 1_000


def use_compile(setting: str, device: torch.device, sequences_per_step: int, graphed: bool, total_steps: int) -> bool:
    """`auto` = on CUDA from FUSED_MIN_SEQUENCES sequences per step and COMPILE_MIN_STEPS steps, when the
    step is not a CUDA graph: there the step is compute-bound, and inductor's fused norms, RoPE and SwiGLU
    (with no weight gradients for the frozen norms) beat liger's kernels. `on` compiles wherever it can,
    a graphed step too: inductor's kernels are then captured and replayed inside our graph."""
    if setting == "auto":
        return (device.type == "cuda" and sequences_per_step >= FUSED_MIN_SEQUENCES and not graphed
                and total_steps >= COMPILE_MIN_STEPS)
    return setting == "on"


def compile_body(llm):
    """The decoder's training forward, embeddings in, last hidden states out, with every decoder layer
    compiled (regional compilation: the layers share one code object, so one compile serves all of them,
    in seconds rather than the minutes a whole-decoder graph takes). The compiled layers are swapped in for
    the call only: eval and generation keep running the eager modules."""
    model = llm.model
    compiled = torch.nn.ModuleList(torch.compile(layer) for layer in model.layers)

    def body(embeds: torch.Tensor) -> torch.Tensor:
        eager = model.layers
        model.layers = compiled
        try:
            return model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        finally:
            model.layers = eager

    return body


def compile_tower(tower) -> None:
    """Compiles the frozen vision tower's encoder layers in place (regional, as compile_body). The tower
    only ever runs without autograd, so one graph serves training, eval and the feature cache, whose batch
    sizes differ: each layer's input is marked dynamic in the batch dimension alone. `dynamic=True` made
    every input dim symbolic, and duck sizing then gave a batch as large as the tower's width the width's
    symbol, which the static weights pin: batch 768 on SigLIP-base specialised the graph, and the first
    eval and golden dump recompiled (H200, 2026-12-02)."""
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    for layer in layers if layers is not None else [tower]:
        layer.forward = torch.compile(layer.forward)  # hooks stay eager: the mark lands before tracing
        layer.register_forward_pre_hook(_batch_dim_dynamic, with_kwargs=True)


def _batch_dim_dynamic(module, args, kwargs) -> None:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor):
        torch._dynamo.mark_dynamic(hidden, 0)


def compile_connector(connector):
    """The connector's training forward, compiled (its norms, GELU and attention fused: 0.419 -> 0.402 s a
    step at batch 768 on an H200). A wrapper that shares the connector's parameters: eval, ablations and
    generation call the eager module, and checkpoints see the module's own state-dict keys."""
    return torch.compile(connector)


# SDPA backends of the LLM's and the connectors' forwards (training, eval, generation): cuDNN's attention is
# left out. The connectors' eval at batch 250 spent ~0.5 s planning its two attention layers at a process's
# first eval (benchmarks/eval_timing.py --profile-first, H200, 2026-12-03). For the LLM: cuDNN builds
# an execution plan for each new shape (~140 ms on an H200), and generation has a new key length at every
# token: a process's first golden dump (64 x 64 new tokens, small preset) took 14.3 s with it, 2.6 s
# without (later dumps 2.0-2.7 s either way; benchmarks/first_generate.py). Training and eval batches meet
# a new padded length every few batches. Flash attention is as fast once planned (step alone, batch 768:
# 0.4188 s against cuDNN's 0.4189 s). The vision tower keeps torch's choice: its shapes are fixed but for
# the batch size, so it plans a few times per run. So does the CUDA-graph step, planned once per captured
# shape: with flash attention its gradients no longer matched the same step run eagerly to 1e-3
# (test_cuda_paths.py::test_cuda_graph_step_equals_the_eager_step, H200).
NO_CUDNN_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_without_cudnn():
    return sdpa_kernel(NO_CUDNN_BACKENDS)
