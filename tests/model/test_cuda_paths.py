"""The CUDA-only paths (liger-kernel's fused kernels, bf16 autocast, the mask-free causal attention)
against the plain PyTorch path the CPU tests cover. Run on a GPU machine; skipped elsewhere."""
import importlib.util

import pytest
import torch

from tests.model.test_backbone import tiny_batch
from vlmtrack.model.backbone import load_backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.kernels import use_fused_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CAPTIONS = ["a red circle", "an image of two shapes on a gray background: a small red circle at the left and a "
            "large blue square at the right", "three shapes on a teal background"]


def losses_and_grad(bb, batch, conn):
    conn.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        visual = conn(bb.vision_features(batch.pixel_values))
        sums = bb.token_losses(batch.input_ids, batch.labels, visual.unsqueeze(0))[0]
    sums.sum().backward()
    return sums.detach().float(), conn.proj_out.weight.grad.detach().float().clone()


@pytest.fixture
def qwen3_restored(monkeypatch):
    """liger-kernel patches Qwen3's modules process-wide: put them back after the test."""
    from transformers.models.qwen3 import modeling_qwen3

    for name in ("apply_rotary_pos_emb", "Qwen3RMSNorm", "Qwen3MLP"):
        monkeypatch.setattr(modeling_qwen3, name, getattr(modeling_qwen3, name))


def test_liger_kernels_match_plain_pytorch(tiny_paths, qwen3_restored):
    pytest.importorskip("liger_kernel")
    cuda = torch.device("cuda")
    plain = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.bfloat16).to(cuda)
    fused = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.bfloat16).to(cuda)
    fused.fused_ce = use_fused_kernels(fused.llm, cuda, "liger", log=lambda *_: None)
    assert fused.fused_ce is not None
    batch = tiny_batch(plain, CAPTIONS).to(cuda)
    torch.manual_seed(0)
    conn = Connector(plain.vision_dim, plain.llm_dim, 4, 1, 2).to(cuda)
    a, ga = losses_and_grad(plain, batch, conn)
    b, gb = losses_and_grad(fused, batch, conn)
    assert torch.allclose(a, b, rtol=3e-2, atol=3e-2), (a, b)
    assert torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0) > 0.99


def test_mask_free_attention_equals_the_masked_model_on_right_padding(tiny_paths):
    cuda = torch.device("cuda")
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.float32).to(cuda)
    batch = tiny_batch(bb, CAPTIONS).to(cuda)
    conn = Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2).to(cuda)
    with torch.no_grad():
        visual = conn(bb.vision_features(batch.pixel_values))
        sums = bb.token_losses(batch.input_ids, batch.labels, visual.unsqueeze(0))[0]
        logits = bb.llm(inputs_embeds=bb.embed(batch.input_ids, visual), attention_mask=batch.attention_mask).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch.labels[:, 1:],
                                           ignore_index=-100, reduction="none").sum(1)
    assert torch.allclose(sums, ce, rtol=1e-4, atol=1e-4)


def test_cuda_graph_step_equals_the_eager_step(tiny_paths):
    import copy

    from vlmtrack.model.forward import batch_losses
    from vlmtrack.train.graphed import GraphedSteps, static_inputs

    cuda = torch.device("cuda")
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.bfloat16).to(cuda)
    torch.manual_seed(0)
    graphed = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2, vision_ln=ln).to(cuda) for ln in (False, True)]
    same_path = copy.deepcopy(graphed)  # the same fixed-shape step, run eagerly: isolates the graph
    steps = GraphedSteps(bb, graphed, torch.bfloat16, 4, log=lambda *_: None)
    eager = GraphedSteps(bb, same_path, torch.bfloat16, 4, log=lambda *_: None)
    dynamic = copy.deepcopy(graphed)  # the loop's eager path
    shapes = [CAPTIONS, CAPTIONS[::-1], ["a red circle", "two shapes"]]
    for _ in range(2):  # the first pass captures, the second replays
        for captions in shapes:  # accumulated, as in a window of micro-batches
            batch = tiny_batch(bb, captions)  # random pixels: one batch for all three paths
            got = steps.step(batch, tokens=20)
            assert got is not None, steps.failed
            eager.inv_tokens.fill_(1 / 20)
            same = eager._forward_backward({k: v.to(cuda) for k, v in static_inputs(bb, batch, 4).items()})
            with torch.autocast("cuda", dtype=torch.bfloat16):
                want = batch_losses(bb, dynamic, batch.to(cuda)).sum(1)
            (want / 20).sum().backward()
            assert torch.allclose(got, same, rtol=1e-3, atol=1e-3), (got, same)
            assert torch.allclose(got.float(), want.detach().float(), rtol=2e-2, atol=2e-2), (got, want)
    assert len(steps.graphs) == 2  # two shapes after padding, each captured once
    for g, e in zip(graphed, same_path):
        for pg, pe in zip(g.parameters(), e.parameters()):
            assert torch.allclose(pg.grad, pe.grad, rtol=1e-3, atol=1e-5)
    flat = {name: torch.cat([p.grad.flatten() for c in conns for p in c.parameters()])
            for name, conns in (("graphed", graphed), ("dynamic", dynamic))}
    assert torch.nn.functional.cosine_similarity(flat["graphed"], flat["dynamic"], dim=0) > 0.99


def test_training_with_cuda_graphs_matches_eager_training(tiny_paths, tmp_path, qwen3_restored):
    """Graphs on (with liger's kernels where installed: `auto` uses them inside a graph) against the eager
    plain-PyTorch loop."""
    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.tracking.base import JsonlTracker
    from vlmtrack.train import loop

    finals = {}
    for mode in ("off", "on"):
        cfg = tiny_config(tiny_paths, tmp_path / mode)
        cfg.train.cuda_graphs, cfg.train.gradient_accum = mode, 2
        finals[mode] = loop.train(cfg, JsonlTracker(), log=lambda *_: None)["final_eval"]["eval_loss"]
    assert abs(finals["on"] - finals["off"]) < 2e-2 * finals["off"], finals


def test_training_with_compiled_layers_matches_eager_training(tiny_paths, tmp_path, qwen3_restored):
    """train.compile=on (compiled decoder and tower layers, liger's fused cross-entropy where installed)
    against the eager loop, bf16 on CUDA."""
    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.tracking.base import JsonlTracker
    from vlmtrack.train import loop

    finals = {}
    for mode in ("off", "on"):
        cfg = tiny_config(tiny_paths, tmp_path / mode)
        cfg.train.cuda_graphs, cfg.train.compile = "off", mode
        cfg.train.kernels = "liger" if importlib.util.find_spec("liger_kernel") else "torch"
        finals[mode] = loop.train(cfg, JsonlTracker(), log=lambda *_: None)["final_eval"]["eval_loss"]
    assert abs(finals["on"] - finals["off"]) < 2e-2 * finals["off"], finals


def test_compiled_layers_inside_cuda_graphs_match_eager_training(tiny_paths, tmp_path, qwen3_restored):
    """train.compile=on with train.cuda_graphs=on: inductor's kernels captured in our graph, against the
    eager plain loop; the run says it captured (no fallback to eager steps)."""
    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.tracking.base import JsonlTracker
    from vlmtrack.train import loop

    finals, lines = {}, []
    for graphs, compiled in (("off", "off"), ("on", "on")):
        cfg = tiny_config(tiny_paths, tmp_path / graphs)
        cfg.train.cuda_graphs, cfg.train.compile, cfg.train.gradient_accum = graphs, compiled, 2
        result = loop.train(cfg, JsonlTracker(), log=lambda *a: lines.append(" ".join(map(str, a))))
        finals[graphs] = result["final_eval"]["eval_loss"]
    assert any("[graphs] captured" in line for line in lines) and not any("capture failed" in line for line in lines)
    assert abs(finals["on"] - finals["off"]) < 2e-2 * finals["off"], finals


def test_a_liger_run_leaves_later_plain_models_plain(tiny_paths, qwen3_restored):
    """liger swaps Qwen3's modeling classes and RoPE process-wide: a later torch (or compiled) run in the
    same process must get the plain modules, and the liger model keeps its kernels."""
    pytest.importorskip("liger_kernel")
    from transformers.models.qwen3 import modeling_qwen3

    plain_rope, plain_norm = modeling_qwen3.apply_rotary_pos_emb, modeling_qwen3.Qwen3RMSNorm
    cuda = torch.device("cuda")
    fused = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.bfloat16).to(cuda)
    assert use_fused_kernels(fused.llm, cuda, "liger", log=lambda *_: None) is not None
    assert modeling_qwen3.Qwen3RMSNorm is plain_norm, "classes go back at once"
    assert modeling_qwen3.apply_rotary_pos_emb is not plain_rope, "the liger model still needs its RoPE"
    later = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.bfloat16).to(cuda)
    assert use_fused_kernels(later.llm, cuda, "torch", log=lambda *_: None) is None
    assert modeling_qwen3.apply_rotary_pos_emb is plain_rope
    norm = later.llm.model.norm
    assert type(norm) is plain_norm and "forward" not in vars(norm), "a plain model, no patched instance"
    assert "forward" in vars(fused.llm.model.norm) or type(fused.llm.model.norm) is not plain_norm


def test_the_training_loader_pins_its_batches(tiny_paths, tmp_path):
    from tests.data.test_dataset import tiny_dataset
    from vlmtrack.data.loader import loader

    bb, ds = tiny_dataset(tiny_paths, tmp_path, dtype=torch.bfloat16, pixel_dtype=torch.bfloat16)
    batch = next(iter(loader(ds, [[0, 1, 2, 3]], bb.pad_id, num_workers=1, pin=True)))
    assert batch.input_ids.is_pinned() and batch.labels.is_pinned() and batch.pixel_values.is_pinned()
    assert batch.pixel_values.dtype == torch.bfloat16
    joined = next(iter(loader(ds, [[0, 1, 2, 3]], bb.pad_id, num_workers=2, pin=True, pieces=2)))
    assert torch.equal(joined.pixel_values, batch.pixel_values) and joined.ids == batch.ids
