"""The embedded demo's tiny model bundle: a Qwen3-architecture LM with its own small tokenizer, and a
random-init SigLIP-architecture vision tower, both saved with `save_pretrained` so that vlmtrack loads
them exactly as it loads Qwen3 and SigLIP.

`build_bundle(out_dir)` writes
  out_dir/llm/         tokenizer (byte-level BPE with Qwen2/Qwen3's pre-tokenizer, Qwen3's added tokens and
                       chat template) + Qwen3ForCausalLM, briefly pretrained on CPU
  out_dir/vision/      SiglipVisionModel (random init) + SiglipImageProcessor
  out_dir/bundle.json  the settings, the pretraining losses and the build time

Why the LM is pretrained this way (design/DEMO.md): an LM trained on captions alone never reads what comes
before the caption, so a frozen copy ignores the visual tokens. This one sees sequences in exactly the
product's format (chat template, the `<image>` placeholder expanded to `num_latents` positions, caption +
`<|im_end|>` supervised). In most of them (`p_slot_words`) the slot is filled with the caption's attribute
words (background, colours, shapes, sizes, positions) drawn at random: the LM learns to copy from the slot,
and a connector then only has to write word-like embeddings into it. Some (`p_text_only`) have no slot at
all (the LM of the captions alone); the rest have an empty slot (`<|image_pad|>` only), answered as a
blank picture is captioned in the demo data (`synth.BLANK_CAPTION`).

Why the empty slot: vision ablations. A connector fed all-zero features sees a picture whose patches are all
alike, which to a tiny LM that copies well reads as some plain, confidently wrong picture, no worse than a
shuffled one: zero < shuffled, by a seed's chance either way. The demo data holds blank pictures of any
colour, captioned as having nothing in them, so the connector learns that patches all alike mean "nothing
here" and writes what the LM answers as blank; zero features are such a picture, and the LM's blank answer
is far from any caption (correct < shuffled < zero, on every seed tried).
Measured with a throw-away connector (Perceiver resampler, 64 latents, 300-600 steps): a dense slot steers
far better than the attribute words at a few places among fillers (after 700 steps at lr 3e-3, caption loss
with words in the slot 0.26 vs 0.53 nats, filler 0.63; connector ablation gaps 0.15-0.37 vs 0.06-0.13), and
supervising the words inside the slot too (next-token prediction among them: the same copy circuit) makes
the connector learn faster and widens the gaps. Noise on the slot's embeddings, a larger learning rate or
more layers did not help.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from vlmtrack.data import prompt
from vlmtrack.demo import synth

CHAT_TEMPLATE_PATH = Path(__file__).with_name("qwen3_chat_template.jinja")

# Qwen3's added tokens in id order (151643 ...), with their `special` flag as in Qwen3's tokenizer.json.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
# Qwen3's tokenizer_config `additional_special_tokens`: <|im_start|> ... <|video_pad|>.
QWEN3_ADDITIONAL_SPECIAL_TOKENS = [t for t, _ in QWEN3_ADDED_TOKENS[1:14]]
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SLOT_FILLER = "<|image_pad|>"

# The bundle's own synthetic data, offset from the caller's seed (the demo dataset has its own).
_TOKENIZER_DATA_SEED = 1_000
_PRETRAIN_DATA_SEED = 2_000
_HELDOUT_DATA_SEED = 3_000


@dataclass(frozen=True)
class BundleSettings:
    # tokenizer
    vocab_size: int = 640  # BPE vocabulary before Qwen3's 26 added tokens (training may stop short of it)
    tokenizer_samples: int = 4_000
    # LM (Qwen3 architecture)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    # LM pretraining
    pretrain_samples: int = 8_000
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-2
    warmup_steps: int = 30
    weight_decay: float = 0.01
    p_slot_words: float = 0.7  # share of sequences whose slot holds the caption's attribute words
    p_text_only: float = 0.15  # share with no slot at all (the instruction alone): the text-only caption LM
    # the rest: an empty slot (fillers), answered as a blank picture is (synth.BLANK_CAPTION)
    slot_loss: bool = True  # also supervise the words inside the slot
    threads: int = 2
    # vision tower (SigLIP architecture)
    patch_size: int = 8
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 256
    vision_layers: int = 2
    vision_heads: int = 4


# --------------------------------------------------------------------------------------------- tokenizer


def chat_template() -> str:
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def _tokenizer_corpus(num_samples: int, seed: int) -> list[str]:
    """Captions, instructions (without the `<image>` placeholder) and the chat roles."""
    texts = ["system\n", "user\n", "assistant\n"] * 50 + synth.BRIEF_INSTRUCTIONS * 20
    for record, _ in synth.sample_records(num_samples, seed):
        human, gpt = (turn["value"] for turn in record["conversations"])
        texts += [human.replace(prompt.IMAGE_TOKEN, "").strip("\n"), gpt]
    return texts


def build_tokenizer(seed: int = 0, settings: BundleSettings = BundleSettings()):
    """A small byte-level BPE tokenizer trained on the demo's captions and instructions, with Qwen3's added
    tokens (after the BPE vocabulary, in Qwen3's order), eos/pad tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_tokenizer_corpus(settings.tokenizer_samples, seed + _TOKENIZER_DATA_SEED), trainer)
    for content, special in QWEN3_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=QWEN3_ADDITIONAL_SPECIAL_TOKENS,
        chat_template=chat_template(),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
    )


# ------------------------------------------------------------------------------------ pretraining data


@dataclass
class PretrainExample:
    input_ids: list[int]
    labels: list[int]  # as `prompt.encode_sample`: caption tokens + <|im_end|>, IGNORE_INDEX elsewhere
    slot_labels: list[int]  # the slot's words (next-token targets inside the slot), IGNORE_INDEX elsewhere


class PretrainEncoder:
    """Encodes (record, scene) pairs as `prompt.encode_sample` does (chat template, `<image>` expanded to
    `num_latents` positions, labels on caption + `<|im_end|>`), with the slot holding either
    `<|image_pad|>` fillers or the scene's attribute words."""

    def __init__(self, tokenizer, num_latents: int):
        self.tokenizer = tokenizer
        self.num_latents = num_latents
        self._with_image = copy.deepcopy(tokenizer)
        self._image_id = prompt.add_image_token(self._with_image)
        self.filler_id = tokenizer.convert_tokens_to_ids(SLOT_FILLER)
        self.end_id = prompt.end_of_turn_id(tokenizer)
        self._prompts: dict[str, tuple[list[int], int]] = {}
        self._text_prompts: dict[str, list[int]] = {}
        self._words: dict[str, list[int]] = {}

    def prompt_ids(self, human_text: str) -> tuple[list[int], int]:
        """Prompt ids with the slot expanded (fillers in it), and the slot's first position."""
        if human_text not in self._prompts:
            text = prompt.prompt_text(self._with_image, human_text)
            ids = self._with_image(text, add_special_tokens=False)["input_ids"]
            at = ids.index(self._image_id)
            self._prompts[human_text] = (ids[:at] + [self.filler_id] * self.num_latents + ids[at + 1 :], at)
        return self._prompts[human_text]

    def text_prompt_ids(self, human_text: str) -> list[int]:
        """Prompt ids of the instruction alone: the `<image>` placeholder and its line break removed."""
        if human_text not in self._text_prompts:
            text = prompt.prompt_text(self.tokenizer, human_text.replace(prompt.IMAGE_TOKEN, "").strip("\n"))
            self._text_prompts[human_text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._text_prompts[human_text]

    def word_ids(self, word: str) -> list[int]:
        if word not in self._words:  # spelt as inside a caption: after a space
            self._words[word] = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return self._words[word]

    def slot(self, words: list[str], rng: random.Random) -> list[int]:
        """`num_latents` ids: the words drawn at random (with replacement) until the slot is full."""
        out: list[int] = []
        while len(out) < self.num_latents:
            out += self.word_ids(rng.choice(words))
        return out[: self.num_latents]

    def encode(self, record: dict, scene: synth.Scene, slot: str, rng: random.Random,
               answer: str | None = None) -> PretrainExample:
        """`slot`: "words" (the scene's attribute words), "empty" (fillers) or "text" (no slot at all). The
        answer is the record's caption, after an empty slot the blank-picture caption; `answer` replaces
        either (held-out scoring)."""
        human, gpt = (turn["value"] for turn in record["conversations"])
        if slot == "words" and not scene.shapes:  # a blank picture: nothing to put in the slot
            slot = "empty"
        if slot == "text":
            prompt_ids = list(self.text_prompt_ids(human))
        else:
            prompt_ids, at = self.prompt_ids(human)
            prompt_ids = list(prompt_ids)
        slot_labels = [prompt.IGNORE_INDEX] * len(prompt_ids)
        if slot == "words":
            prompt_ids[at : at + self.num_latents] = self.slot(synth.attribute_words(scene), rng)
            slot_labels[at + 1 : at + self.num_latents] = prompt_ids[at + 1 : at + self.num_latents]
        if answer is None:
            answer = synth.BLANK_CAPTION if slot == "empty" else gpt
        target = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.end_id]
        ignore = [prompt.IGNORE_INDEX] * len(target)
        return PretrainExample(prompt_ids + target, [prompt.IGNORE_INDEX] * len(prompt_ids) + target, slot_labels + ignore)


def collate(examples: list[PretrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; with causal attention the padding never affects the real tokens."""
    width = max(len(e.input_ids) for e in examples)
    out = {"input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long)}
    for key in ("labels", "slot_labels"):
        out[key] = torch.full((len(examples), width), prompt.IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        out["input_ids"][i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        out["labels"][i, : len(e.labels)] = torch.tensor(e.labels)
        out["slot_labels"][i, : len(e.slot_labels)] = torch.tensor(e.slot_labels)
    return out


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


# --------------------------------------------------------------------------------------------------- LM


def build_lm(tokenizer, num_latents: int, seed: int, settings: BundleSettings = BundleSettings(), log=print, device="cpu"):
    """A small Qwen3ForCausalLM pretrained on product-format sequences; returns (model, stats)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    s = settings
    encoder = PretrainEncoder(tokenizer, num_latents)
    pairs = synth.sample_records(s.pretrain_samples, seed + _PRETRAIN_DATA_SEED)
    longest = max(len(encoder.prompt_ids(r["conversations"][0]["value"])[0]) for r, _ in pairs)
    longest += max(len(tokenizer(r["conversations"][1]["value"])["input_ids"]) for r, _ in pairs) + 1
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.hidden_size // s.num_heads,
        max_position_embeddings=max(512, 2 ** math.ceil(math.log2(longest))),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=encoder.end_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=s.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < s.warmup_steps:
            return s.lr * (step + 1) / s.warmup_steps
        progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
        return s.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

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
            group["lr"] = lr_at(step)
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


def _draw_slot(rng: random.Random, s: BundleSettings) -> str:
    u = rng.random()
    return "words" if u < s.p_slot_words else "text" if u < s.p_slot_words + s.p_text_only else "empty"


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


# ----------------------------------------------------------------------------------------------- vision


def build_vision(image_size: int, seed: int, settings: BundleSettings = BundleSettings()):
    """Random-init SiglipVisionModel (random features keep colour, shape and position) + its processor."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    s = settings
    config = SiglipVisionConfig(
        image_size=image_size,
        patch_size=s.patch_size,
        hidden_size=s.vision_hidden_size,
        intermediate_size=s.vision_intermediate_size,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        num_channels=3,
    )
    torch.manual_seed(seed)
    model = SiglipVisionModel(config).eval()
    processor = SiglipImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return model, processor


# -------------------------------------------------------------------------------------------------- API


def build_bundle(
    out_dir: Path, *, num_latents: int = 64, image_size: int = 64, seed: int = 0, settings: BundleSettings | None = None
) -> None:
    """Writes out_dir/llm (tokenizer + Qwen3ForCausalLM, save_pretrained) and out_dir/vision
    (SiglipVisionModel + SiglipImageProcessor, save_pretrained)."""
    out_dir = Path(out_dir)
    settings = settings or BundleSettings()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.random.fork_rng(devices=[]):  # seeds the build without touching the caller's RNG
            _build(out_dir, num_latents, image_size, seed, settings)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, num_latents: int, image_size: int, seed: int, settings: BundleSettings) -> None:
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(seed, settings)
    t1 = time.perf_counter()
    print(f"demo bundle: tokenizer of {len(tokenizer)} tokens in {t1 - t0:.1f}s")
    lm, stats = build_lm(tokenizer, num_latents, seed, settings)
    t2 = time.perf_counter()
    print(
        f"demo bundle: LM pretrained in {t2 - t1:.1f}s ({settings.steps} steps); held-out caption loss "
        f"{stats['heldout_caption_loss_slot_words']:.3f} with attribute words in the slot, "
        f"{stats['heldout_caption_loss_text_only']:.3f} text only, {stats['heldout_caption_loss_empty_slot']:.3f} "
        "with an empty slot"
    )
    vision, processor = build_vision(image_size, seed, settings)
    tokenizer.save_pretrained(out_dir / "llm")
    lm.save_pretrained(out_dir / "llm")
    vision.save_pretrained(out_dir / "vision")
    processor.save_pretrained(out_dir / "vision")
    total = time.perf_counter() - t0
    meta = {"num_latents": num_latents, "image_size": image_size, "seed": seed, "settings": asdict(settings)}
    meta.update(lm_pretraining=stats, build_seconds=round(total, 1))
    (out_dir / "bundle.json").write_text(json.dumps(meta, indent=1))
    print(f"demo bundle: written to {out_dir} in {total:.1f}s")
