"""Golden-set caption generation (spec 3.2-3.6): the training wrapper stopped before the caption,
batched, no_grad, autocast, seeded sampling; one jsonl record per item."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vlmtrack.data.dataset import collate_prompts, pixel_values
from vlmtrack.data.golden import qual_file
from vlmtrack.data.prompt import end_of_turn_id, expanded_prompt_ids
from vlmtrack.files import write_jsonl
from vlmtrack.model.kernels import sdpa_without_cudnn
from vlmtrack.runtime.device import autocast


def generated_part(sequences: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
    """generate(inputs_embeds=...) returns only new tokens; generate(input_ids=...) returns the prompt
    too. Slice the prompt off only when it is really there (spec 3.6: blind slicing gave empty text)."""
    p = prompt_ids.shape[1]
    if sequences.shape[1] > p and torch.equal(sequences[:, :p].cpu(), prompt_ids.cpu()):
        return sequences[:, p:]
    return sequences


def _record(item: dict, text: str, n_tokens: int) -> dict:
    return {"id": item["id"], "bucket": item["bucket"], "gt_text": item["gt_text"], "pred_text": text,
            "image_relpath": item["image_relpath"], "label_len": item["label_len"], "pred_tokens_len": n_tokens,
            "pred_hash": hashlib.sha1(text.encode()).hexdigest()[:12]}


@torch.no_grad()
def generate_golden(backbone, connectors: list, golden: list[dict], human_by_id: dict[str, str], image_root: Path,
                    num_latents: int, ecfg, device: torch.device, dtype: torch.dtype) -> list[list[dict]]:
    """Captions for every golden item from every connector; returns one record list per connector."""
    tok = backbone.tokenizer
    eot = end_of_turn_id(tok)
    torch.manual_seed(ecfg.generation_seed)  # generate() takes no generator (spec: seeded this way)
    out = [[] for _ in connectors]
    for c in connectors:
        c.eval()
    for start in range(0, len(golden), ecfg.golden_batch_size):
        items = golden[start:start + ecfg.golden_batch_size]
        prompts = [expanded_prompt_ids(tok, human_by_id[it["id"]], backbone.image_token_id, num_latents)
                   for it in items]
        ids, mask = collate_prompts(prompts, backbone.pad_id)
        pixels = torch.stack([pixel_values(backbone.image_processor, image_root, it["image_relpath"], backbone.tower_dtype)
                              for it in items])
        ids, mask, pixels = ids.to(device), mask.to(device), pixels.to(device)
        with autocast(device, dtype):
            features = backbone.vision_features(pixels)
            k = len(connectors)
            # cuDNN would plan each new shape: the connector's at this batch size, the LLM's at every token
            with sdpa_without_cudnn():
                visual = torch.stack([c(features) for c in connectors])
                embeds = backbone.embed(ids.repeat(k, 1), visual.reshape(-1, *visual.shape[2:]))
                sequences = backbone.llm.generate(
                    inputs_embeds=embeds, attention_mask=mask.repeat(k, 1), do_sample=ecfg.temperature > 0,
                    temperature=ecfg.temperature, top_p=ecfg.top_p, max_new_tokens=ecfg.max_new_tokens,
                    repetition_penalty=ecfg.repetition_penalty, eos_token_id=eot, pad_token_id=backbone.pad_id,
                )
        new = generated_part(sequences, ids.repeat(k, 1)).cpu()
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            n = tokens.index(eot) if eot in tokens else len(tokens)
            text = tok.decode(tokens[:n], skip_special_tokens=True).strip()
            out[row // len(items)].append(_record(items[row % len(items)], text, n))
    for c in connectors:
        c.train()
    return out


def write_golden(records: list[dict], out_dir: Path, step: int, size: int) -> Path:
    path = qual_file(out_dir, step, size)
    write_jsonl(path, records)
    return path
