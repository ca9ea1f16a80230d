"""What the CUDA-graphed step's padding costs (issue 25: the sweep is GPU-bound): for each pair of padding
multiples (sequence length, label positions), the padded tokens against the real ones, the label rows of
the [labels, vocab] logits against the real labels, how many shapes (graph captures) a run meets, and the
step's FLOPs (LLM forward + input-gradient backward, LM head at the label rows; the vision tower is cached)
relative to the padding in vlmtrack/train/graphed.py.

Batches are drawn as the trainer draws them (shuffled, `--rows` samples, no length grouping: the spec's
order), over the bench's synthetic LLaVA set and demo tokenizer by default, or over your own data:

    python benchmarks/graph_padding.py                                   # the bench's sweep data (~15 labels)
    python benchmarks/graph_padding.py --caption-repeat 3                # the long-caption sweep's data
    python benchmarks/graph_padding.py --data blip_laion_cc_sbu_558k.json --tokenizer Qwen/Qwen3-0.6B
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlmtrack

import yaml  # noqa: E402

from vlmtrack.bench.run import PRESETS, flops_per_sample  # noqa: E402
from vlmtrack.data.llava import read_samples  # noqa: E402
from vlmtrack.data.prompt import add_image_token, encode_sample  # noqa: E402
from vlmtrack.train.graphed import LABEL_STEP, SHAPE_STEP, padded  # noqa: E402

CANDIDATES = ((32, 32), (16, 16), (SHAPE_STEP, LABEL_STEP), (8, 8), (1, 1))


def bench_pairs(n: int, caption_repeat: int) -> list[tuple[str, str]]:
    """(instruction, caption) of the bench's synthetic set (vlmtrack.bench.run.write_images' records)."""
    from vlmtrack.demo import synth

    pairs = []
    for record, _ in synth.sample_records(n, seed=7):
        human, gpt = (turn["value"] for turn in record["conversations"][:2])
        pairs.append((human, " ".join([gpt] * caption_repeat)))
    return pairs


def lengths(tokenizer, pairs: list[tuple[str, str]], num_latents: int, max_seq_len: int) -> list[tuple[int, int]]:
    """(sequence length, label positions) of each sample, as the trainer encodes it."""
    image_id = add_image_token(tokenizer)
    out = []
    for human, caption in pairs:
        e = encode_sample(tokenizer, human, caption, image_id, num_latents, max_seq_len)
        out.append((len(e.input_ids), e.num_supervised))
    return out


def measure(sizes: list[tuple[int, int]], rows: int, preset: dict, epochs: int = 3, seed: int = 0,
            candidates=CANDIDATES) -> dict[tuple[int, int], dict[str, float]]:
    """Per (length step, label step): padded / real tokens, label rows / real labels, distinct shapes, and
    the mean step FLOPs per sequence."""
    vision = flops_per_sample(preset, 0, 0)
    rng, order, batches = random.Random(seed), list(range(len(sizes))), []
    for _ in range(epochs):
        rng.shuffle(order)
        batches += [order[i:i + rows] for i in range(0, len(order) - rows + 1, rows)]
    real_tokens = sum(sizes[i][0] for b in batches for i in b)
    real_labels = sum(sizes[i][1] for b in batches for i in b)
    out = {}
    for length_step, label_step in candidates:
        tokens = labels = flops = 0.0
        shapes = set()
        for b in batches:
            width = padded(max(sizes[i][0] for i in b), length_step)
            # the step's label positions: labels after the first (the shift), as static_inputs counts them
            label_width = padded(max(1, max(sizes[i][1] for i in b)), label_step)
            shapes.add((width, label_width))
            tokens, labels = tokens + rows * width, labels + rows * label_width
            flops += rows * (flops_per_sample(preset, width, label_width) - vision)
        out[(length_step, label_step)] = {"padded_per_real_token": tokens / real_tokens,
                                          "label_rows_per_label": labels / real_labels, "shapes": len(shapes),
                                          "gflop_per_sequence": flops / (len(batches) * rows) / 1e9}
    return out


def print_table(results: dict, sizes: list[tuple[int, int]], rows: int) -> None:
    ours = results[(SHAPE_STEP, LABEL_STEP)]["gflop_per_sequence"]
    print(f"\n{len(sizes):,} samples: {statistics.mean(s for s, _ in sizes):.1f} tokens, "
          f"{statistics.mean(n for _, n in sizes):.1f} label tokens on average; batches of {rows}")
    print("| length step | label step | padded / real tokens | label rows / labels | shapes | GFLOP per sequence "
          f"| vs {SHAPE_STEP}/{LABEL_STEP} (graphed.py) |")
    print("|---|---|---|---|---|---|---|")
    for (ls, lb), r in results.items():
        print(f"| {ls} | {lb} | {r['padded_per_real_token']:.3f} | {r['label_rows_per_label']:.2f} | {r['shapes']} | "
              f"{r['gflop_per_sequence']:.1f} | {r['gflop_per_sequence'] / ours - 1:+.1%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a LLaVA-format JSON (default: the bench's synthetic set)")
    p.add_argument("--tokenizer", help="a tokenizer path or hub id (default: the demo tokenizer)")
    p.add_argument("--records", type=int, default=5000, help="records of the synthetic set")
    p.add_argument("--caption-repeat", type=int, default=1, help="say each synthetic caption this many times")
    p.add_argument("--rows", type=int, default=4, help="samples per micro-batch (the spec's 4)")
    p.add_argument("--num-latents", type=int, default=64)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--preset", default="small")
    args = p.parse_args()
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from vlmtrack.demo.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(0)
    if args.data:
        pairs = [(s.human, s.caption) for s in read_samples(Path(args.data))]
    else:
        pairs = bench_pairs(args.records, args.caption_repeat)
    sizes = lengths(tokenizer, pairs, args.num_latents, args.max_seq_len)
    preset = yaml.safe_load(PRESETS.read_text())[args.preset]
    print_table(measure(sizes, args.rows, preset), sizes, args.rows)


if __name__ == "__main__":
    main()
