"""train.compile: the compiled decoder gives the eager step's losses and gradients (checked on CPU, where
inductor compiles too), serves the training forward only, and is chosen where it pays."""
import pytest
import torch

from tests.model.test_backbone import tiny_batch
from tests.train.test_graphed import CAPTIONS
from vlmtrack.config import ConfigError, load_config
from vlmtrack.model.backbone import load_backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.kernels import COMPILE_MIN_STEPS, compile_body, compile_connector, compile_tower, use_compile
from vlmtrack.train.graphed import static_inputs


@pytest.mark.slow
def test_compiled_body_equals_the_eager_step_at_every_length(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    torch.manual_seed(0)
    conns = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2, vision_ln=ln) for ln in (False, True)]

    def run(batch):
        for c in conns:
            c.zero_grad()
        features = bb.vision_features(batch.pixel_values)
        sums = bb.token_losses(batch.input_ids, batch.labels, torch.stack([c(features) for c in conns]))
        sums.sum().backward()
        return sums.detach(), [p.grad.clone() for c in conns for p in c.parameters()]

    batches = [tiny_batch(bb, CAPTIONS), tiny_batch(bb, CAPTIONS[:1] * 3)]  # two sequence lengths
    assert batches[0].input_ids.shape[1] != batches[1].input_ids.shape[1]
    eager = [run(b) for b in batches]
    bb.compiled_body = compile_body(bb.llm)
    for batch, (losses, grads) in zip(batches, eager):
        c_losses, c_grads = run(batch)
        assert torch.allclose(c_losses, losses, atol=1e-4), (c_losses, losses)
        for a, b in zip(c_grads, grads):
            assert torch.allclose(a, b, atol=1e-4)
    # eval (no autograd) takes the eager decoder: calls into the compiled one would count here
    calls = []
    bb.compiled_body = calls.append
    with torch.no_grad():
        features = bb.vision_features(batches[0].pixel_values)
        bb.token_losses(batches[0].input_ids, batches[0].labels, conns[0](features)[None])
    assert calls == []


@pytest.mark.slow
def test_the_graphed_steps_fixed_shape_forward_runs_through_the_compiled_body(tiny_paths):
    """train.compile=on with CUDA graphs: the fixed-shape step the graph captures takes the compiled decoder
    (its kernels are what the graph replays) and gives the eager step's losses and gradients."""
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    batch = tiny_batch(bb, CAPTIONS)
    host = static_inputs(bb, batch, num_latents=4)
    torch.manual_seed(0)
    conns = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2, vision_ln=ln) for ln in (False, True)]
    features = bb.vision_features(batch.pixel_values)

    def run():
        for c in conns:
            c.zero_grad()
        visual = torch.stack([c(features) for c in conns])
        sums = bb.static_token_losses(host["input_ids"], host["image_at"], host["label_at"], host["targets"], visual)
        sums.sum().backward()
        return sums.detach(), [p.grad.clone() for c in conns for p in c.parameters()]

    eager_losses, eager_grads = run()
    compiled, calls = compile_body(bb.llm), []
    bb.compiled_body = lambda embeds: calls.append(embeds.shape) or compiled(embeds)
    losses, grads = run()
    assert calls == [(2 * 3, host["input_ids"].shape[1], bb.llm_dim)], "the K x B rows went through the compiled body"
    assert torch.allclose(losses, eager_losses, atol=1e-4), (losses, eager_losses)
    for a, b in zip(grads, eager_grads):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_compiled_tower_gives_the_eager_features(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    pixels = [tiny_batch(bb, CAPTIONS).pixel_values, tiny_batch(bb, CAPTIONS[:1]).pixel_values]
    eager = [bb.vision_features(p) for p in pixels]
    compile_tower(bb.tower)
    assert all(hasattr(layer.forward, "_torchdynamo_orig_callable") for layer in bb.tower.encoder.layers)
    for p, e in zip(pixels, eager):  # two batch sizes
        assert torch.allclose(bb.vision_features(p), e, atol=1e-5)


@pytest.mark.slow
def test_the_compiled_tower_serves_every_batch_size_from_one_graph(tiny_paths):
    """A batch the size of the tower's width (768 and SigLIP-base on the H200) once specialised the
    graph to that batch: duck sizing gave the batch and hidden dims one symbol, and the hidden dim meets
    the static weights. Every later batch size then recompiled (the first eval and golden dump)."""
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    width, size = bb.tower.config.hidden_size, bb.tower.config.image_size
    compile_tower(bb.tower)
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.manual_seed(0)
    for batch in (width, 3, 5):
        pixels = torch.randn(batch, 3, size, size)
        assert bb.vision_features(pixels).shape[0] == batch
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.slow
def test_compiled_connector_trains_the_connectors_own_parameters(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    torch.manual_seed(0)
    conn = Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2, vision_ln=True)
    features = bb.vision_features(tiny_batch(bb, CAPTIONS).pixel_values)
    keys = list(conn.state_dict())

    def grads(module):
        conn.zero_grad()
        out = module(features)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in conn.parameters()]

    eager_out, eager_grads = grads(conn)
    compiled = compile_connector(conn)
    for _ in range(2):
        out, got = grads(compiled)
        assert torch.allclose(out, eager_out, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, eager_grads))
    assert list(compiled.parameters()) == list(conn.parameters()) and list(conn.state_dict()) == keys


def test_compile_is_chosen_where_it_pays():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    long = COMPILE_MIN_STEPS
    assert use_compile("auto", cuda, 256, graphed=False, total_steps=long)
    assert not use_compile("auto", cuda, 256, graphed=False, total_steps=long - 1), "too short to pay back"
    assert not use_compile("auto", cuda, 24, graphed=True, total_steps=long), "a CUDA graph serves"
    assert not use_compile("auto", cpu, 256, graphed=False, total_steps=long)
    assert use_compile("on", cpu, 4, graphed=False, total_steps=1) and not use_compile("off", cuda, 256, False, long)
    assert use_compile("on", cuda, 24, graphed=True, total_steps=1), "`on` compiles inside a CUDA graph too"
    with pytest.raises(ConfigError, match="train.compile must be auto, on or off, got 'yes please'"):
        load_config(None, ["train.compile=yes please"])
    assert load_config(None, ["train.compile=on"]).train.compile == "on"
