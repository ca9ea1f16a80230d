"""The static-cache decode loop (vlmtrack/eval/decode.py) against transformers' generate(): the same tokens
greedy, the same draws sampled, at several batch sizes, left-padded prompts of different lengths and rows
that end early. On CPU the loop runs eagerly; the CUDA tests (skipped here) check the captured step."""
import json

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from vlmtrack.config import ConfigError, load_config
from vlmtrack.data.dataset import collate_prompts
from vlmtrack.data.prompt import expanded_prompt_ids
from vlmtrack.eval.decode import StaticDecoder, next_scores, sampling_settings, use_static_decode
from vlmtrack.eval.golden_gen import generate_golden
from vlmtrack.model.backbone import load_backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.kernels import sdpa_without_cudnn

HUMANS = ["<image>\nDescribe.", "<image>\nWrite a terse but informative summary of the picture.",
          "Write a terse summary.\n<image>", "<image>\nWhat is it?", "Give a short caption of this image.\n<image>",
          "<image>\nSummarize the visual content of the image in one short sentence please."]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def sharp(tiny_paths):
    """The tiny backbone with its LM's matrices scaled up: the random LM then prefers different tokens at
    different steps and rows (unscaled, greedy repeats one token), so equal outputs mean something."""
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    with torch.no_grad():
        for p in bb.llm.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    torch.manual_seed(0)
    return bb, [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2).eval() for _ in range(2)]


def prompt_batch(bb, conn, rows: int, device=torch.device("cpu")):
    """Left-padded prompts (as collate_prompts pads golden batches) of different lengths, embedded."""
    ids, mask = collate_prompts([expanded_prompt_ids(bb.tokenizer, HUMANS[r % len(HUMANS)], bb.image_token_id, 4)
                                 for r in range(rows)], bb.pad_id)
    assert rows == 1 or len(set(mask.sum(1).tolist())) > 1  # prompts of several lengths: some rows padded
    with torch.no_grad():
        features = torch.randn(rows, 16, bb.vision_dim, generator=torch.Generator().manual_seed(rows))
        ids, mask, features = ids.to(device), mask.to(device), features.to(device)
        return bb.embed(ids, conn(features)), mask


def both_paths(bb, embeds, mask, seed=0, check_every=1, after=None, **overrides):
    """generate()'s tokens and the static loop's; `after` (a list) receives a draw each path's generator
    gives once it is done, so equal entries mean the loop left the generator where generate() does."""
    kwargs = dict(do_sample=False, temperature=0.2, top_p=0.9, max_new_tokens=NEW_TOKENS, repetition_penalty=1.0,
                  eos_token_id=2, pad_token_id=bb.pad_id)
    kwargs.update(overrides)
    with torch.no_grad():
        torch.manual_seed(seed)
        reference = bb.llm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        if after is not None:
            after.append(torch.rand(4))
        sampling = sampling_settings(bb.llm, **kwargs)
        decoder = StaticDecoder(bb.llm, embeds.shape[1] + NEW_TOKENS, torch.device("cpu"), torch.float32,
                                check_every=check_every)
        torch.manual_seed(seed)
        fast = decoder.generate(embeds, mask, sampling)
        if after is not None:
            after.append(torch.rand(4))
        decoder.close()
    return reference, fast


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_greedy_static_decode_equals_generate(sharp, rows):
    bb, conns = sharp
    embeds, mask = prompt_batch(bb, conns[0], rows)
    reference, fast = both_paths(bb, embeds, mask)
    assert torch.equal(fast, reference)
    # an eos that row 0 draws at step `at` and other rows later or never: ended rows get pads, the rest run on
    at = next(i for i in range(1, NEW_TOKENS) if int(reference[0, i]) not in reference[0, :i].tolist())
    eos = int(reference[0, at])
    ends = [int((row == eos).nonzero()[0, 0]) if (row == eos).any() else None for row in reference]
    reference, fast = both_paths(bb, embeds, mask, eos_token_id=eos)
    assert torch.equal(fast, reference)
    assert ends[0] == at and (fast[0, at + 1:] == bb.pad_id).all()
    if rows > 1:
        assert len(set(ends)) > 1  # rows end at different steps
    if None in ends:
        assert fast.shape[1] == NEW_TOKENS  # a row that never ends keeps the loop going


@pytest.mark.parametrize("check_every", [1, 5])
def test_all_rows_ending_stops_the_loop_as_generate_does(sharp, check_every):
    bb, conns = sharp
    embeds, mask = prompt_batch(bb, conns[0], 3)
    reference, _ = both_paths(bb, embeds, mask)
    eos = int(reference[0, 0])
    reference, fast = both_paths(bb, embeds, mask, check_every=check_every, max_new_tokens=NEW_TOKENS,
                                 eos_token_id=eos)
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("check_every", [3, 5, NEW_TOKENS + 1])
def test_asking_every_few_tokens_whether_all_rows_ended_gives_generates_tokens_and_leaves_its_generator(
        sharp, check_every):
    """Graphed decoding asks every STOP_CHECK_EVERY tokens (one host sync, not one per token): the steps past
    the end are cut and the generator is put back, so the tokens and the next draw are generate()'s."""
    bb, conns = sharp
    embeds, mask = prompt_batch(bb, conns[0], 4)
    settings = dict(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.0)
    for seed in range(8):
        reference, _ = both_paths(bb, embeds, mask, seed=seed, **settings)
        # an eos every row draws before the end: the first token after row 0's first one
        ends = [set(row[: NEW_TOKENS - 2].tolist()) for row in reference]
        common = set.intersection(*ends)
        if common:
            break
    assert common, "no seed gave a token every row draws: the test needs one"
    after = []
    reference, fast = both_paths(bb, embeds, mask, seed=seed, check_every=check_every, after=after,
                                 eos_token_id=min(common), **settings)
    assert reference.shape[1] < NEW_TOKENS  # every row ended early: the loop ran past the end and cut back
    assert torch.equal(fast, reference)
    assert torch.equal(after[0], after[1])


def test_a_repetition_penalty_is_left_to_generate(sharp):
    """How transformers applies the penalty to an inputs_embeds prompt changed between 5.x releases (the
    H200 image's 5.17 and CI's 5.23 differ): the static loop refuses it, and `auto` dumps with generate()."""
    bb, _ = sharp
    reason = sampling_settings(bb.llm, do_sample=False, max_new_tokens=NEW_TOKENS, repetition_penalty=1.5,
                               eos_token_id=2, pad_token_id=0)
    assert isinstance(reason, str) and "repetition_penalty" in reason


def test_sampled_captions_reproducible_for_a_seed_and_the_same_draws_as_generate(sharp):
    bb, conns = sharp
    embeds, mask = prompt_batch(bb, conns[0], 6)
    settings = dict(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.0)
    reference, fast = both_paths(bb, embeds, mask, seed=5, **settings)
    _, again = both_paths(bb, embeds, mask, seed=5, **settings)
    _, other = both_paths(bb, embeds, mask, seed=6, **settings)
    assert torch.equal(fast, again) and not torch.equal(fast, other)
    assert torch.equal(fast, reference)  # on CPU the loop draws exactly what generate() draws


def test_processors_match_transformers_in_generates_order():
    """Temperature, top-k (generate's default 50 included) and top-p, as generate's _get_logits_processor
    appends them; greedy leaves the logits as they are."""
    torch.manual_seed(0)
    scores = torch.randn(3, 120) * 3
    new_ids = torch.randint(0, 120, (3, 7))
    s = sampling_settings_for(do_sample=True, temperature=0.6, top_k=50, top_p=0.8)
    reference = LogitsProcessorList([TemperatureLogitsWarper(0.6), TopKLogitsWarper(50), TopPLogitsWarper(0.8)])
    assert torch.equal(next_scores(scores.clone(), s), reference(new_ids, scores.clone()))
    greedy = sampling_settings_for(do_sample=False, temperature=0.6, top_k=50, top_p=0.8)
    assert torch.equal(next_scores(scores.clone(), greedy), scores)


def sampling_settings_for(**fields):
    from vlmtrack.eval.decode import Sampling

    return Sampling(max_new_tokens=8, eos_token_id=2, pad_token_id=0, **fields)


def test_generate_merges_the_models_generation_config(sharp):
    bb, _ = sharp
    s = sampling_settings(bb.llm, do_sample=True, temperature=0.2, top_p=0.9, max_new_tokens=8, eos_token_id=2,
                          pad_token_id=0, repetition_penalty=1.0)
    assert (s.do_sample, s.temperature, s.top_p, s.top_k) == (True, 0.2, 0.9, 50)  # top_k: generate's default
    reason = sampling_settings(bb.llm, max_new_tokens=8, eos_token_id=2, pad_token_id=0, no_repeat_ngram_size=2)
    assert isinstance(reason, str) and "no_repeat_ngram_size" in reason


def golden_items(tiny_paths, n: int):
    records = json.loads(tiny_paths["data"].read_text())[:n]
    items = [{"id": r["id"], "bucket": "short", "gt_text": r["conversations"][1]["value"],
              "image_relpath": r["image"], "label_len": 3} for r in records]
    return items, {r["id"]: r["conversations"][0]["value"] for r in records}


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_golden_dump_static_equals_generate(sharp, tiny_paths, batch_size):
    """Whole dumps, two connectors side by side, a last batch smaller than the others (batch 4 over 7)."""
    bb, conns = sharp
    items, human = golden_items(tiny_paths, 7)
    cfg = load_config(None, [f"eval.golden_batch_size={batch_size}", "eval.max_new_tokens=10",
                             "eval.temperature=0"])
    dumps = {}
    for mode in ("generate", "static"):
        cfg.eval.golden_decode = mode
        dumps[mode] = generate_golden(bb, conns, items, human, tiny_paths["images"], 4, cfg.eval,
                                      torch.device("cpu"), torch.float32)
    assert dumps["static"] == dumps["generate"]
    assert len({r["pred_text"] for recs in dumps["static"] for r in recs}) > 2  # captions that differ
    cfg.eval.temperature = 0.8  # sampled: the same dump twice for one seed
    again = [generate_golden(bb, conns, items, human, tiny_paths["images"], 4, cfg.eval, torch.device("cpu"),
                             torch.float32) for _ in range(2)]
    assert again[0] == again[1]


def test_golden_decode_setting():
    assert load_config(None, ["eval.golden_decode=generate"]).eval.golden_decode == "generate"
    with pytest.raises(ConfigError, match="eval.golden_decode"):
        load_config(None, ["eval.golden_decode=fast"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_static_decode("auto", cpu) and use_static_decode("auto", cuda)
    assert use_static_decode("static", cpu) and not use_static_decode("generate", cuda)
    with pytest.raises(ValueError, match="golden_decode"):
        use_static_decode("graph", cpu)


def test_a_failing_static_decode_hands_auto_dumps_to_generate(sharp, monkeypatch):
    from vlmtrack.eval import decode as decode_mod

    bb, conns = sharp
    embeds, mask = prompt_batch(bb, conns[0], 3)
    s = sampling_settings(bb.llm, max_new_tokens=4, eos_token_id=2, pad_token_id=bb.pad_id)
    calls = []

    def broken(*a, **kw):
        calls.append(1)
        raise TypeError("forward() got an unexpected keyword argument")

    monkeypatch.setattr(decode_mod, "decode", broken)
    logs = []
    lenient = StaticDecoder(bb.llm, embeds.shape[1] + 4, torch.device("cpu"), torch.float32, logs.append, strict=False)
    assert lenient.try_generate(embeds, mask, s) is None and lenient.try_generate(embeds, mask, s) is None
    assert len(calls) == 1 and len(logs) == 1 and "generate() for the rest" in logs[0]
    strict = StaticDecoder(bb.llm, embeds.shape[1] + 4, torch.device("cpu"), torch.float32, logs.append)
    with pytest.raises(TypeError):
        strict.try_generate(embeds, mask, s)


def test_decode_step_traces_whole_so_a_graph_can_capture_it(sharp):
    """What a CUDA graph needs of the step, checked on CPU: no host sync and no branch on a tensor's value
    (dynamo traces it as one graph), and it keeps its fixed-address state advancing in place."""
    from vlmtrack.eval.decode import StaticRunner

    bb, conns = sharp
    embeds, mask = prompt_batch(bb, conns[0], 3)
    runner = StaticRunner(bb.llm, 3, embeds.shape[1] + 4, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        runner.prefill(embeds, mask)
        eager = runner.step(torch.tensor([5, 6, 7]), graphed=False).clone()
        runner.prefill(embeds, mask)
        runner.token.copy_(torch.tensor([5, 6, 7]))
        torch.compile(runner._step, fullgraph=True, backend="eager")()
    # dynamo takes transformers' repeat-kv attention rather than its packed one: equal up to rounding
    assert torch.allclose(runner.logits, eager, atol=1e-4)
    assert int(runner.slot) == embeds.shape[1] + 1 and int(runner.cache.layers[0].cumulative_length) == int(runner.slot)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows", [3, 8])
def test_cuda_graph_decode_equals_generate(tiny_paths, rows):
    """The captured step against generate() on the GPU, fp32: the same greedy tokens; and captured."""
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"])).to(torch.device("cuda"))
    with torch.no_grad():
        for p in bb.llm.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    conn = Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2).cuda().eval()
    embeds, mask = prompt_batch(bb, conn, rows, torch.device("cuda"))
    kwargs = dict(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=2, pad_token_id=bb.pad_id,
                  temperature=0.2, top_p=0.9, repetition_penalty=1.0)
    with torch.no_grad(), sdpa_without_cudnn():  # the backends golden_gen decodes under
        reference = bb.llm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        decoder = StaticDecoder(bb.llm, embeds.shape[1] + NEW_TOKENS, torch.device("cuda"), torch.float32)
        fast = [decoder.generate(embeds, mask, sampling_settings(bb.llm, **kwargs)) for _ in range(2)]
    runner = decoder.runners[rows]
    assert runner.failed is None and runner.graph is not None
    assert torch.equal(fast[0], reference) and torch.equal(fast[1], reference)  # and a replay of the graph
    decoder.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_golden_dump_auto_captures_the_step_under_bf16(tiny_paths):
    """A whole dump as training runs it on a GPU (auto, bf16 autocast, two connectors, a smaller last
    batch): the step is captured (no fallback logged), captions come for every item, and the memory the
    cache and graphs took is given back: a second dump ends where the first did (cuBLAS keeps one workspace
    for the capture stream, ~128 MiB on an H200, once per process)."""
    cuda = torch.device("cuda")
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), torch.bfloat16).to(cuda)
    conns = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2).to(cuda) for _ in range(2)]
    items, human = golden_items(tiny_paths, 7)
    cfg = load_config(None, ["eval.golden_batch_size=4", "eval.max_new_tokens=16"])
    logs, held = [], []
    for _ in range(2):
        records = generate_golden(bb, conns, items, human, tiny_paths["images"], 4, cfg.eval, cuda, torch.bfloat16,
                                  log=logs.append)
        held.append(torch.cuda.memory_allocated())
    assert not [line for line in logs if "failed" in line or "generate() decoding" in line], logs
    assert [len(r) for r in records] == [7, 7]
    assert held[1] <= held[0] + 2**20
