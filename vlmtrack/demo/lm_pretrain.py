"""The demo LM's pretraining: a small Qwen3ForCausalLM trained briefly on CPU on sequences in the product's
format (lm_pretrain_data), its slot holding the caption's attribute words (`p_slot_words`), nothing at all
(`p_text_only`) or fillers answered as a blank picture (the rest). bundle.py says why."""
from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F

from vlmtrack.data import prompt
from vlmtrack.demo import synth
from vlmtrack.demo.lm_pretrain_data import PretrainEncoder, PretrainExample, collate
from vlmtrack.demo.settings import BundleSettings
from vlmtrack.model.random_init import random_qwen3

# The pretraining's own synthetic data, offset from the caller's seed (the demo dataset has its own).
_PRETRAIN_DATA_SEED = 2_000
_HELDOUT_DATA_SEED = 3_000


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over the supervised tokens, and their count."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=prompt.IGNORE_INDEX, reduction="sum")
    return loss, int((target != prompt.IGNORE_INDEX).sum())


@torch.no_grad()
def caption_loss(model, examples: list[PretrainExample], pad_id: int, chunk: int = 256) -> float:
    """Token-weighted caption (+ `<|im_end|>`) loss of the examples, as the product measures it, collated
    `chunk` at a time."""
    total, tokens = 0.0, 0
    for at in range(0, len(examples), chunk):
        batch = collate(examples[at : at + chunk], pad_id)
        loss, n = _token_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        total, tokens = total + loss.item(), tokens + n
    return total / max(tokens, 1)


def _optimizer(model, s: BundleSettings) -> torch.optim.AdamW:
    """AdamW; the norms' gains (the only vectors) are not decayed."""
    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=s.lr,
        betas=(0.9, 0.98),
    )


def _lr_at(step: int, s: BundleSettings) -> float:
    """Linear warm-up, cosine decay to a tenth."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _draw_slot(rng: random.Random, s: BundleSettings) -> str:
    u = rng.random()
    return "words" if u < s.p_slot_words else "text" if u < s.p_slot_words + s.p_text_only else "empty"


def build_lm(tokenizer, num_latents: int, seed: int, settings: BundleSettings = BundleSettings(), log=print, device="cpu"):
    """A small Qwen3ForCausalLM pretrained on product-format sequences; returns (model, stats)."""
    s = settings
    encoder = PretrainEncoder(tokenizer, num_latents)
    pairs = synth.sample_records(s.pretrain_samples, seed + _PRETRAIN_DATA_SEED)
    longest = max(len(encoder.prompt_ids(r["conversations"][0]["value"])[0]) for r, _ in pairs)
    longest += max(len(tokenizer(r["conversations"][1]["value"])["input_ids"]) for r, _ in pairs) + 1
    model = random_qwen3(
        tokenizer,
        seed=seed,
        device=device,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.hidden_size // s.num_heads,
        max_position_embeddings=max(512, 2 ** math.ceil(math.log2(longest))),
        tie_word_embeddings=True,
    )
    params = list(model.parameters())
    opt = _optimizer(model, s)
    rng = random.Random(seed)
    order: list[int] = []
    caption_losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(s.steps):
        if len(order) < s.batch_size:
            epoch = list(range(len(pairs)))
            rng.shuffle(epoch)
            order += epoch
        idx, order = order[: s.batch_size], order[s.batch_size :]
        examples = [encoder.encode(*pairs[i], slot=_draw_slot(rng, s), rng=rng) for i in idx]
        batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"]).logits
        cap_sum, cap_n = _token_losses(logits, batch["labels"])
        loss_sum, n = cap_sum, cap_n
        if s.slot_loss:
            slot_sum, slot_n = _token_losses(logits, batch["slot_labels"])
            loss_sum, n = loss_sum + slot_sum, n + slot_n
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s)
        opt.zero_grad(set_to_none=True)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        caption_losses.append(cap_sum.item() / cap_n)
        if step % 100 == 0 or step == s.steps - 1:
            log(f"  lm step {step:4d}  caption loss {caption_losses[-1]:.3f}  {time.perf_counter() - t0:.1f}s")
    model.eval().cpu()

    heldout = synth.sample_records(128, seed + _HELDOUT_DATA_SEED)
    stats = {"train_caption_loss_first": caption_losses[0], "train_caption_loss_last50": sum(caption_losses[-50:]) / 50}
    stats.update({f"heldout_caption_loss_{k}": v for k, v in heldout_losses(model, encoder, heldout, seed).items()})
    return model, {k: round(v, 4) for k, v in stats.items()}


def heldout_losses(model, encoder: PretrainEncoder, pairs: list, seed: int) -> dict[str, float]:
    """Caption loss with the attribute words in the slot, with no slot (text only) and with an empty slot
    (the caption scored where the LM would rather say the picture is blank)."""
    out = {}
    for name, slot in (("slot_words", "words"), ("text_only", "text"), ("empty_slot", "empty")):
        rng = random.Random(seed)
        examples = [encoder.encode(r, sc, slot=slot, rng=rng, answer=r["conversations"][1]["value"])
                    for r, sc in pairs]
        out[name] = caption_loss(model, examples, encoder.tokenizer.pad_token_id)
    return out
