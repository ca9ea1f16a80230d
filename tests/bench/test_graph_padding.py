"""benchmarks/graph_padding.py: the padding it counts is the graphed step's own, and its table compares the
padding multiples by what they cost."""
import torch
import yaml

from tests.bench.test_startup_script import SCRIPT, load_script
from tests.helpers.tiny_tokenizer import tiny_tokenizer
from vlmtrack.bench.run import PRESETS
from vlmtrack.data.dataset import collate
from vlmtrack.data.prompt import add_image_token, encode_sample
from vlmtrack.train.graphed import LABEL_STEP, SHAPE_STEP, static_inputs

PADDING = SCRIPT.parent / "graph_padding.py"


class _Backbone:  # what static_inputs reads of a backbone
    def __init__(self, tokenizer):
        self.pad_id, self.visual_token_ids = tokenizer.pad_token_id or 0, (add_image_token(tokenizer),)


def test_the_sizes_it_counts_are_the_shapes_the_graphed_step_makes():
    bench, tokenizer = load_script(PADDING), tiny_tokenizer()
    pairs = bench.bench_pairs(6, caption_repeat=2)
    sizes = bench.lengths(tokenizer, pairs, num_latents=4, max_seq_len=512)
    image_id = add_image_token(tokenizer)
    items = []
    for i, (human, caption) in enumerate(pairs):
        e = encode_sample(tokenizer, human, caption, image_id, 4, 512)
        items.append({"input_ids": e.input_ids, "labels": e.labels, "pixel_values": torch.zeros(3, 2, 2),
                      "bucket": "short", "label_len": e.label_len, "num_supervised": e.num_supervised, "truncated": e.truncated,
                      "id": str(i), "image_relpath": f"{i}.jpg"})
    host = static_inputs(_Backbone(tokenizer), collate(items, 0), num_latents=4)
    assert host["input_ids"].shape[1] == -(-max(s for s, _ in sizes) // SHAPE_STEP) * SHAPE_STEP
    assert host["label_at"].shape[1] == -(-max(n for _, n in sizes) // LABEL_STEP) * LABEL_STEP


def test_finer_padding_pads_less_and_meets_more_shapes(capsys):
    bench, tokenizer = load_script(PADDING), tiny_tokenizer()
    sizes = bench.lengths(tokenizer, bench.bench_pairs(400, 1), num_latents=64, max_seq_len=2048)
    preset = yaml.safe_load(PRESETS.read_text())["small"]
    results = bench.measure(sizes, rows=4, preset=preset, candidates=((32, 32), (16, 8), (1, 1)))
    coarse, ours, exact = results[(32, 32)], results[(16, 8)], results[(1, 1)]
    assert exact["padded_per_real_token"] >= 1 and exact["label_rows_per_label"] >= 1  # a batch pads to its longest
    for key in ("padded_per_real_token", "label_rows_per_label", "gflop_per_sequence"):
        assert coarse[key] >= ours[key] >= exact[key], key
    assert coarse["shapes"] <= ours["shapes"] <= exact["shapes"]
    assert coarse["gflop_per_sequence"] > 1.03 * ours["gflop_per_sequence"]  # what the finer multiples save
    bench.print_table(results, sizes, 4)
    assert "| 16 | 8 |" in capsys.readouterr().out
