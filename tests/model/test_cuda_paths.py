"""The CUDA-only paths (liger-kernel's fused kernels, bf16 autocast, the mask-free causal attention)
against the plain PyTorch path the CPU tests cover. Run on a GPU machine; skipped elsewhere."""
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


def test_liger_kernels_match_plain_pytorch(tiny_paths, monkeypatch):
    pytest.importorskip("liger_kernel")
    from transformers.models.qwen3 import modeling_qwen3

    for name in ("apply_rotary_pos_emb", "Qwen3RMSNorm", "Qwen3MLP"):  # liger patches these process-wide
        monkeypatch.setattr(modeling_qwen3, name, getattr(modeling_qwen3, name))
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
