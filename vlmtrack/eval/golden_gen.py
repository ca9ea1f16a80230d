"""Golden-set caption generation (spec 3.2-3.6): the training wrapper stopped before the caption,
batched, no_grad, autocast, seeded sampling; one jsonl record per item."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from vlmtrack.data.dataset import collate_prompts, image_pixels, pixel_values
from vlmtrack.data.golden import qual_file
from vlmtrack.data.prompt import end_of_turn_id, expanded_prompt_ids
from vlmtrack.eval.decode import StaticDecoder, sampling_settings, use_static_decode
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


def generation_kwargs(backbone, ecfg, eos_token_id: int) -> dict:
    """generate()'s arguments for the golden settings (eval.temperature, top_p, max_new_tokens, ...)."""
    return dict(do_sample=ecfg.temperature > 0, temperature=ecfg.temperature, top_p=ecfg.top_p,
                max_new_tokens=ecfg.max_new_tokens, repetition_penalty=ecfg.repetition_penalty,
                eos_token_id=eos_token_id, pad_token_id=backbone.pad_id)


def caption_text(tokenizer, tokens: list[int], eos_token_id: int) -> tuple[str, int]:
    """(caption, its token count): a row's new tokens up to the first end-of-turn, decoded."""
    n = tokens.index(eos_token_id) if eos_token_id in tokens else len(tokens)
    return tokenizer.decode(tokens[:n], skip_special_tokens=True).strip(), n


@torch.no_grad()
def generate_golden(backbone, connectors: list, golden: list[dict], human_by_id: dict[str, str], image_root: Path,
                    num_latents: int, ecfg, device: torch.device, dtype: torch.dtype, eos_token_id: int | None = None,
                    log=print) -> list[list[dict]]:
    """Captions for every golden item from every connector; returns one record list per connector.
    eos_token_id: where a caption ends (default: the end-of-turn token); benchmarks pass one never drawn."""
    tok = backbone.tokenizer
    eot = end_of_turn_id(tok) if eos_token_id is None else eos_token_id
    kwargs = generation_kwargs(backbone, ecfg, eot)
    decoder = _static_decoder(backbone, golden, human_by_id, num_latents, ecfg, kwargs, device, dtype, log)
    torch.manual_seed(ecfg.generation_seed)  # generate() takes no generator (spec: seeded this way)
    out = [[] for _ in connectors]
    for c in connectors:
        c.eval()
    # the images decode and resize on threads (PIL lets go of the GIL) while the GPU captions earlier
    # batches: one at a time before each batch, they were ~0.3 s of a ~3 s dump at batch 8
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="golden-images")
    try:
        pixels = [pool.submit(pixel_values, backbone.image_processor, image_root, it["image_relpath"],
                              backbone.tower_dtype) for it in golden]
        for start in range(0, len(golden), ecfg.golden_batch_size):
            items = golden[start:start + ecfg.golden_batch_size]
            prompts = [_prompt(backbone, human_by_id[it["id"]], num_latents) for it in items]
            batch_pixels = torch.stack([p.result() for p in pixels[start:start + ecfg.golden_batch_size]])
            new = _batch_tokens(backbone, connectors, prompts, batch_pixels, kwargs, decoder, device, dtype)
            for row in range(new.shape[0]):
                text, n = caption_text(tok, new[row].tolist(), eot)
                out[row // len(items)].append(_record(items[row % len(items)], text, n))
    finally:
        pool.shutdown(cancel_futures=True)
        if decoder is not None:
            decoder[0].close()
        for c in connectors:
            c.train()
    return out


@torch.no_grad()
def caption_images(backbone, connector, images: list, human: str, num_latents: int, ecfg, device: torch.device,
                   dtype: torch.dtype) -> list[str]:
    """A caption for each decoded RGB image, with the golden settings (ecfg) and one instruction for all: the
    captioning model's path (no golden items, no files). generate() decodes, seeded as the golden dump is."""
    tok = backbone.tokenizer
    eot = end_of_turn_id(tok)
    kwargs = generation_kwargs(backbone, ecfg, eot)
    prompt = _prompt(backbone, human, num_latents)
    torch.manual_seed(ecfg.generation_seed)
    connector.eval()
    captions = []
    for start in range(0, len(images), ecfg.golden_batch_size):
        chunk = images[start:start + ecfg.golden_batch_size]
        pixels = torch.stack([image_pixels(backbone.image_processor, im, backbone.tower_dtype) for im in chunk])
        new = _batch_tokens(backbone, [connector], [prompt] * len(chunk), pixels, kwargs, None, device, dtype)
        captions += [caption_text(tok, row.tolist(), eot)[0] for row in new]
    return captions


def _static_decoder(backbone, golden, human_by_id, num_latents, ecfg, kwargs, device, dtype, log):
    """(StaticDecoder, Sampling) when eval.golden_decode picks the static loop and it can reproduce
    generate() for this model and these settings; None for generate()."""
    if not use_static_decode(ecfg.golden_decode, device) or not golden:
        return None
    sampling = sampling_settings(backbone.llm, **kwargs)
    if isinstance(sampling, str):
        if ecfg.golden_decode == "static":
            raise ValueError(f"eval.golden_decode=static: {sampling}")
        log(f"[golden] generate() decoding: {sampling}")
        return None
    # one cache length for the whole dump, so each row count's graph serves every batch
    longest = max(len(_prompt(backbone, human_by_id[it["id"]], num_latents)) for it in golden)
    decoder = StaticDecoder(backbone.llm, longest + sampling.max_new_tokens, device, dtype, log,
                            strict=ecfg.golden_decode == "static")
    return decoder, sampling


def _prompt(backbone, human: str, num_latents: int) -> list[int]:
    return expanded_prompt_ids(backbone.tokenizer, human, backbone.image_token_id, num_latents,
                               backbone.boundary_token_id)


def _batch_tokens(backbone, connectors, prompts: list[list[int]], pixels: torch.Tensor, kwargs, decoder, device,
                  dtype) -> torch.Tensor:
    """The new tokens of one batch (prompt ids and tower inputs), every connector's rows stacked
    (connector-major), on the CPU."""
    ids, mask = collate_prompts(prompts, backbone.pad_id)
    ids, mask, pixels = ids.to(device), mask.to(device), pixels.to(device)
    k = len(connectors)
    with autocast(device, dtype):
        features = backbone.vision_features(pixels)
        # cuDNN would plan each new shape: the connector's at this batch size, the LLM's at every token
        with sdpa_without_cudnn():
            visual = torch.stack([c(features) for c in connectors])
            embeds = backbone.embed(ids.repeat(k, 1), visual.reshape(-1, *visual.shape[2:]))
            tokens = decoder[0].try_generate(embeds, mask.repeat(k, 1), decoder[1]) if decoder else None
            if tokens is not None:
                return tokens.cpu()
            sequences = backbone.llm.generate(inputs_embeds=embeds, attention_mask=mask.repeat(k, 1), **kwargs)
    return generated_part(sequences, ids.repeat(k, 1)).cpu()


def write_golden(records: list[dict], out_dir: Path, step: int, size: int) -> Path:
    path = qual_file(out_dir, step, size)
    write_jsonl(path, records)
    return path
