"""Dataset + collate: the Batch every consumer (train, eval, ablations, golden) reads."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import default_collate

from vlmtrack.data.llava import DataError, Sample, SampleMeta, resolve_image
from vlmtrack.data.prompt import IGNORE_INDEX, encode_sample


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], visual positions hold the image token id
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE_INDEX outside caption + end-of-turn
    pixel_values: torch.Tensor | None  # [B, 3, H, W]; None when the features come from the cache
    bucket: list[str]
    label_len: torch.Tensor  # [B] spec 1.1 caption length
    num_supervised: torch.Tensor  # [B] label tokens after truncation
    truncated: torch.Tensor  # [B] bool
    ids: list[str]
    image_relpaths: list[str]
    skipped: list[dict]  # {id, image_relpath, reason} of samples whose image could not be decoded
    features: torch.Tensor | None = None  # [B, N, D] cached frozen-tower output (bf16)

    TENSORS = ("input_ids", "attention_mask", "labels", "pixel_values", "features")

    def to(self, device) -> "Batch":
        for name in self.TENSORS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device, non_blocking=True))
        return self

    def pin_memory(self) -> "Batch":
        """What the DataLoader's pin_memory=True calls on a custom batch type (without it the batch stays
        in pageable memory: its copy to the GPU blocks and runs at a fraction of the bus's speed, 23 ms a
        step for 384 cached feature rows on an H200)."""
        for name in self.TENSORS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).pin_memory())
        return self

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def load_image(image_root: Path, relpath: str) -> Image.Image:
    """RGB, whatever the file's mode (L, LA, P, RGBA, CMYK, 16-bit); transparency over white."""
    path = resolve_image(image_root, relpath)
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"image '{relpath}' not found under {image_root}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"image '{relpath}' cannot be decoded: {e}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image decoded to RGB: 16-bit grey scaled to 8 bits rather than clipped, transparency over white."""
    im.load()
    if im.mode.startswith("I;16"):
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def image_from_bytes(data, what: str) -> Image.Image:
    """RGB from an image file's bytes (a served request's image, never a path): a DataError naming `what` and
    why when they are not an image PIL can decode."""
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"{what}: expected the image file's bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{what}: not a decodable image ({len(data)} bytes: {first})") from None


def pixel_values(image_processor, image_root: Path, relpath: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[3, H, W] tower input for one image, as the processor prepares it, in the tower's dtype: the tower
    casts its input to its own dtype first, so casting here gives the same values at half the bytes to copy."""
    return image_pixels(image_processor, load_image(image_root, relpath), dtype)


def image_pixels(image_processor, image: Image.Image, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[3, H, W] tower input for one decoded RGB image (see pixel_values)."""
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0].to(dtype)


def image_problem(image_root: Path, relpath: str) -> str | None:
    """Why the image will not decode, or None."""
    try:
        load_image(image_root, relpath)
    except DataError as e:
        return str(e)
    return None


def image_problems(image_root: Path, relpaths: list[str]) -> list[str | None]:
    """Why each image will not decode, or None, in the order given (used on the eval set before the split is
    used). Threads, since PIL lets go of the GIL while it decodes: 2,000 LLaVA-sized JPEGs take seconds on
    one core."""
    workers = max(1, min(16, os.cpu_count() or 1, len(relpaths) // 64))
    if workers == 1:
        return [image_problem(image_root, rel) for rel in relpaths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda rel: image_problem(image_root, rel), relpaths))


class CaptionDataset(torch.utils.data.Dataset):
    """Samples at `positions` (into the reader's list); text encoded and images loaded on access."""

    def __init__(self, samples: list[Sample], metas: list[SampleMeta], positions: list[int], tokenizer,
                 image_processor, image_root: Path, image_token_id: int, num_latents: int, max_seq_len: int,
                 on_bad_image: str = "fail", features=None, pixel_dtype: torch.dtype = torch.float32,
                 boundary_token_id: int | None = None):
        self.samples, self.metas, self.positions = samples, metas, positions
        self.pixel_dtype = pixel_dtype
        self.on_bad_image, self.features = on_bad_image, features
        self.tokenizer, self.image_processor, self.image_root = tokenizer, image_processor, image_root
        self.image_token_id, self.num_latents, self.max_seq_len = image_token_id, num_latents, max_seq_len
        self.boundary_token_id = boundary_token_id

    def __len__(self) -> int:
        return len(self.positions)

    def vision_bytes(self) -> int:
        """Bytes of one sample's vision input as a batch carries it (cached features or pixel values);
        0 where the processor does not say its output size."""
        if self.features is not None:
            if not self.features.shards:
                return 0
            _, tokens, dim = self.features.shards[0][1]
            return tokens * dim * 2  # bf16
        p = self.image_processor
        size = p.crop_size if getattr(p, "do_center_crop", False) else getattr(p, "size", None)
        side = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        height, width = side("height"), side("width")
        return 3 * height * width * self.pixel_dtype.itemsize if height and width else 0

    def pixels(self, relpath: str) -> torch.Tensor:
        return pixel_values(self.image_processor, self.image_root, relpath, self.pixel_dtype)

    def vision_input(self, relpath: str) -> dict:
        """Cached features when there is a cache (an image it could not read fails as decoding would)."""
        if self.features is None:
            return {"pixel_values": self.pixels(relpath)}
        features = self.features.get(relpath)
        if features is None:
            load_image(self.image_root, relpath)  # raises the reason
            raise DataError(f"image '{relpath}' is missing from the feature cache {self.features.folder}")
        return {"features": features}

    def __getitem__(self, k: int) -> dict:
        i = self.positions[k]
        s, m = self.samples[i], self.metas[i]
        try:
            vision = self.vision_input(s.image_relpath)
        except DataError as e:
            if self.on_bad_image == "fail":
                raise DataError(f"id={s.id}: {e} (a train image: data.on_bad_image=skip would skip and list it; "
                                f"an eval image is never skipped, so that the eval set does not change)") from None
            return {"skipped": {"id": s.id, "image_relpath": s.image_relpath, "reason": str(e)}}
        enc = encode_sample(self.tokenizer, s.human, s.caption, self.image_token_id, self.num_latents, self.max_seq_len,
                            self.boundary_token_id)
        return {
            "input_ids": enc.input_ids, "labels": enc.labels, **vision,
            "bucket": m.bucket, "label_len": enc.label_len, "num_supervised": enc.num_supervised,
            "truncated": enc.truncated, "id": s.id, "image_relpath": s.image_relpath,
        }


def collate(items: list[dict], pad_id: int) -> Batch:
    """Right-padded training/eval batch; samples whose image failed to decode are listed, not batched."""
    skipped = [it["skipped"] for it in items if "skipped" in it]
    items = [it for it in items if "skipped" not in it]
    if not items:
        return Batch(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long),
                     torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 3, 1, 1), [], torch.zeros(0),
                     torch.zeros(0), torch.zeros(0, dtype=torch.bool), [], [], skipped)
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n] = torch.tensor(it["input_ids"])
        labels[r, :n] = torch.tensor(it["labels"])
        mask[r, :n] = 1
    cached = "features" in items[0]
    # in a DataLoader worker default_collate stacks straight into shared memory: the batch then leaves the
    # worker without the copy into shared memory its queue would make (430 MB a batch of so400m features)
    return Batch(
        input_ids=ids, attention_mask=mask, labels=labels,
        pixel_values=None if cached else default_collate([it["pixel_values"] for it in items]),
        features=default_collate([it["features"] for it in items]) if cached else None,
        bucket=[it["bucket"] for it in items],
        label_len=torch.tensor([it["label_len"] for it in items]),
        num_supervised=torch.tensor([it["num_supervised"] for it in items]),
        truncated=torch.tensor([it["truncated"] for it in items]),
        ids=[it["id"] for it in items], image_relpaths=[it["image_relpath"] for it in items], skipped=skipped,
    )


def join_batches(parts: list[Batch], pad_id: int) -> Batch:
    """One batch from consecutive pieces of it, equal to collating all their items at once (re-padded to
    the widest piece)."""
    full = [b for b in parts if len(b)]
    if len(full) < 2:
        joined = full[0] if full else parts[0]
        joined.skipped = [s for b in parts for s in b.skipped]
        return joined
    width = max(b.input_ids.shape[1] for b in full)

    def cat(name: str, fill: int | None = None) -> torch.Tensor | None:
        tensors = [getattr(b, name) for b in full]
        if tensors[0] is None:
            return None
        if fill is not None:
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors]
        return torch.cat(tensors)

    return Batch(
        input_ids=cat("input_ids", pad_id), attention_mask=cat("attention_mask", 0),
        labels=cat("labels", IGNORE_INDEX), pixel_values=cat("pixel_values"), features=cat("features"),
        bucket=[x for b in full for x in b.bucket], label_len=cat("label_len"),
        num_supervised=cat("num_supervised"), truncated=cat("truncated"),
        ids=[x for b in full for x in b.ids], image_relpaths=[x for b in full for x in b.image_relpaths],
        skipped=[s for b in parts for s in b.skipped],
    )


def collate_prompts(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts for generation, so every row's next token follows its own last prompt token."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask

