"""model.connector=idefics2 and `vlmtrack export`: a connector trained in vlmtrack, exported as an
Idefics2ForConditionalGeneration, scores the golden set and captions it exactly as vlmtrack does, loaded
by transformers alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.tiny_models import tiny_config
from vlmtrack import cli
from vlmtrack.config import ConfigError, check_sweep, load_config
from vlmtrack.data.loader import loader
from vlmtrack.data.prompt import BOUNDARY_TOKEN, expanded_prompt_ids
from vlmtrack.eval.checkpoint_eval import eval_dataset, fetch, load_checkpoint
from vlmtrack.eval.evaluate import evaluate
from vlmtrack.eval.golden_gen import generate_golden
from vlmtrack.model.backbone import ModelLoadError, load_backbone
from vlmtrack.model.connector_io import load_connector_weights
from vlmtrack.model.connector import new_connector
from vlmtrack.model.idefics2_export import ExportError, check_image_features, export_idefics2, idefics2_model
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop

STANDALONE = Path(__file__).parents[1] / "helpers" / "idefics2_standalone.py"
STEPS = 50


def train_idefics2(tiny_paths, out: Path) -> Path:
    cfg = tiny_config(tiny_paths, out, train_steps=STEPS, save_every=STEPS, quick_eval_steps=0,
                      run_golden_every="never")
    cfg.model.connector = "idefics2"
    cfg.eval.run_ablations = False
    loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    return out / "checkpoints" / f"step_{STEPS}"


def run_standalone(export_dir: Path, items: list[dict], work: Path, max_new_tokens: int) -> list[dict]:
    """The export scored by transformers alone: python -I (no PYTHONPATH, no script folder on sys.path),
    from a folder outside the repo, vlmtrack and tests blocked from import."""
    (work / "items.json").write_text(json.dumps(items))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-I", str(STANDALONE), str(export_dir), str(work / "items.json"),
                           str(work / "out.json"), str(max_new_tokens)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


@pytest.mark.slow  # ~50 s on 2 cores: 50 training steps, the export, a transformers-only subprocess
def test_export_loads_without_vlmtrack_and_scores_and_captions_as_vlmtrack_does(tiny_paths, tmp_path, store):
    folder = train_idefics2(tiny_paths, tmp_path / "run")
    # exported from the run's MLflow artifacts, as `vlmtrack export runs:/... OUT_DIR --log` does it
    run_id = store.create_run(store.create_experiment("e")).info.run_id
    store.log_artifacts(run_id, str(folder), f"checkpoints/step_{STEPS}")
    store.log_artifact(run_id, str(tmp_path / "run" / "config.yaml"), "config")
    export_dir = tmp_path / "export"
    assert cli.main(["export", f"runs:/{run_id}/checkpoints/step_{STEPS}", str(export_dir), "--log"]) == 0
    logged = {f.path for f in store.list_artifacts(run_id, f"export/step_{STEPS}")}
    assert {f"export/step_{STEPS}/{name}" for name in ("config.json", "model.safetensors", "processor_config.json",
                                                       "tokenizer.json", "chat_template.jinja")} <= logged

    lc = load_checkpoint(*fetch(folder), ["eval.temperature=0", "eval.max_new_tokens=12"])
    bb, data = lc.backbone, lc.data
    sample = {data.samples[i].id: data.samples[i] for i in data.split.eval}
    golden_ids = [g["id"] for g in data.golden]
    positions = [k for k, i in enumerate(data.split.eval) if data.samples[i].id in set(golden_ids)]
    ours = evaluate(bb, [lc.connector], loader(eval_dataset(lc), [positions], bb.pad_id, 0), lc.device,
                    lc.dtype)[0].metrics()
    captions = generate_golden(bb, [lc.connector], data.golden, {i: s.human for i, s in sample.items()},
                               data.image_root, lc.cfg.model.num_latents, lc.cfg.eval, lc.device, lc.dtype,
                               log=lambda *_: None)[0]

    work = tmp_path / "elsewhere"
    work.mkdir()
    items = [{"id": i, "image_path": str(data.image_root / sample[i].image_relpath), "human": sample[i].human,
              "caption": sample[i].caption} for i in golden_ids]
    theirs = run_standalone(export_dir, items, work, lc.cfg.eval.max_new_tokens)

    # the processor's chat template and image expansion give training's prompt, id for id
    for row in theirs:
        assert row["prompt_ids"] == expanded_prompt_ids(bb.tokenizer, sample[row["id"]].human, bb.image_token_id,
                                                        lc.cfg.model.num_latents, bb.boundary_token_id)
    assert sum(r["tokens"] for r in theirs) == ours["eval_label_tokens_total"]
    their_loss = sum(r["loss_sum"] for r in theirs) / sum(r["tokens"] for r in theirs)
    assert their_loss == pytest.approx(ours["eval_loss"], rel=1e-3)
    print(f"golden loss: vlmtrack {ours['eval_loss']:.6f}, export {their_loss:.6f}")
    assert [(r["pred_text"], len(r["pred_tokens"])) for r in theirs] == \
           [(c["pred_text"], c["pred_tokens_len"]) for c in captions]
    # the boundary token's trained row is in the export's input embeddings; the output row is the LLM's,
    # where the boundary started
    weights, _ = load_connector_weights(folder)
    exported = load_file(str(export_dir / "model.safetensors"))
    boundary = bb.tokenizer.convert_tokens_to_ids(BOUNDARY_TOKEN)
    assert torch.equal(exported["model.text_model.embed_tokens.weight"][boundary], weights["boundary"])
    assert not torch.equal(exported["lm_head.weight"][boundary], weights["boundary"])


def test_vlmtrack_export_refuses_a_resampler_checkpoint_and_a_folder_in_use(tiny_paths, tmp_path, capsys):
    cfg = tiny_config(tiny_paths, tmp_path / "run", train_steps=2, save_every=2, quick_eval_steps=0,
                      run_golden_every="never", full_eval_every="never")
    cfg.eval.run_ablations = False
    loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    folder = tmp_path / "run" / "checkpoints" / "step_2"
    assert cli.main(["export", str(folder), str(tmp_path / "export")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"vlmtrack: error: '{folder}' is a model.connector=resampler checkpoint, which has no transformers "
        "equivalent: train with model.connector=idefics2 to export")
    assert not (tmp_path / "export").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "model-00001-of-00002.safetensors").write_text("an earlier export's shard")
    with pytest.raises(ExportError, match="'.*used' exists and is not an empty folder: give a new one"):
        export_idefics2(folder, tmp_path / "used")
    assert cli.main(["export", str(folder), str(tmp_path / "export"), "--log"]) == 2  # a usage error
    assert "--log logs the export on the checkpoint's MLflow run, so it takes a runs:/" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("model.vision_ln=true", "model.vision_ln=true has no Idefics2 equivalent.*set model.vision_ln=false"),
    ("model.resampler_ffn_mult=2", "model.resampler_ffn_mult=2 has no Idefics2 equivalent"),
])
def test_settings_without_an_idefics2_equivalent_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.connector=idefics2", override])
    load_config(None, [override])  # the resampler takes them


def test_an_unknown_connector_and_a_sweep_over_vision_ln_are_refused(capsys):
    with pytest.raises(ConfigError, match="model.connector must be resampler or idefics2, got 'perceiver'"):
        load_config(None, ["model.connector=perceiver"])
    with pytest.raises(ConfigError, match=r"sweep.vision_ln=\[False, True\] holds true.*sweep.vision_ln=\[false\]"):
        check_sweep(load_config(None, ["model.connector=idefics2"]))
    check_sweep(load_config(None, ["model.connector=idefics2", "sweep.vision_ln=[false]"]))
    assert cli.main(["sweep", "model.connector=idefics2"]) == 2  # before the demo assets or an MLflow run
    assert "set sweep.vision_ln=[false]" in capsys.readouterr().err


def test_a_clip_tower_is_refused(tiny_paths, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(tmp_path / "clip")
    with pytest.raises(ModelLoadError, match="needs a SigLIP vision tower.*is clip_vision_model"):
        load_backbone(str(tiny_paths["llm"]), str(tmp_path / "clip"), connector="idefics2")


def test_idefics2_tokens_get_rows_that_change_no_old_logit(tiny_paths):
    """The tiny LLM has no spare rows: Idefics2's three tokens get the mean row, and every old token's
    logit is what it was."""
    plain = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), connector="idefics2")
    old = plain.llm.get_output_embeddings().weight
    new = bb.llm.get_output_embeddings().weight
    assert new.shape[0] == old.shape[0] + 3 == len(bb.tokenizer)  # <image>, the boundary, <end_of_utterance>
    assert torch.equal(new[: old.shape[0]], old) and torch.allclose(new[old.shape[0]:], old.mean(0).expand(3, -1))
    assert bb.visual_token_ids == (bb.boundary_token_id, bb.image_token_id)


def test_the_export_checks_its_image_tokens_against_trainings(tiny_paths):
    """The mapped model's image path equals training's exactly; a tower weight mapped wrong is caught."""
    cfg = load_config(None, ["model.connector=idefics2", "model.num_latents=4", "model.resampler_depth=1",
                             "model.resampler_heads=2"])
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]), connector="idefics2")
    connector = new_connector(cfg.model, bb)
    model = idefics2_model(bb, connector)
    check_image_features(bb, connector, model, tol=0.0)
    with torch.no_grad():
        model.model.vision_model.encoder.layers[0].layer_norm1.bias += 0.1
    with pytest.raises(ExportError, match="image tokens differ from training's by .* the vision tower does not map"):
        check_image_features(bb, connector, model)


def test_an_llm_with_spare_rows_keeps_its_table(tiny_paths, tmp_path):
    """Qwen3's table has 267 rows past its tokenizer: Idefics2's tokens take rows there, nothing is added,
    and the boundary starts at the LLM's own row for it."""
    from tests.helpers.tiny_tokenizer import tiny_tokenizer
    from vlmtrack.model.random_init import save_random_qwen3

    tok = tiny_tokenizer()
    save_random_qwen3(tmp_path / "llm", tok, seed=0, vocab_size=len(tok) + 8, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      max_position_embeddings=256)
    plain = load_backbone(str(tmp_path / "llm"), str(tiny_paths["vision"]))
    bb = load_backbone(str(tmp_path / "llm"), str(tiny_paths["vision"]), connector="idefics2")
    assert torch.equal(bb.llm.get_input_embeddings().weight, plain.llm.get_input_embeddings().weight)
    assert len(bb.tokenizer) == len(tok) + 3 <= bb.llm.get_input_embeddings().weight.shape[0] == len(tok) + 8
    cfg = load_config(None, ["model.connector=idefics2", "model.num_latents=4", "model.resampler_heads=2"])
    connector = new_connector(cfg.model, bb)
    assert torch.equal(connector.boundary, plain.llm.get_input_embeddings().weight[bb.boundary_token_id])
    assert connector(torch.randn(2, 16, bb.vision_dim)).shape == (2, 6, bb.llm_dim)  # boundary, 4 latents, boundary
