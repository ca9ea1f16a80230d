"""The demo LM's tokenizer: a small byte-level BPE trained on the demo's captions and instructions, laid out
as Qwen3's (Qwen2/Qwen3's pre-tokenizer, Qwen3's added tokens after the BPE vocabulary in Qwen3's order,
its eos/pad tokens and chat template), so that vlmtrack's prompt code runs on it as on Qwen3's."""
from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from vlmtrack.data import prompt
from vlmtrack.demo import synth
from vlmtrack.demo.settings import BundleSettings

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

# The tokenizer's own synthetic data, offset from the caller's seed (the demo dataset has its own).
_TOKENIZER_DATA_SEED = 1_000


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
