"""The benchmark itself runs on CPU (tiny preset): every path it times exists without CUDA."""
import pytest

from vlmtrack.bench import run as bench

pytestmark = pytest.mark.slow


def test_bench_prints_the_table_on_cpu(capsys):
    rows, summary = bench.main("tiny", images=120, batch=8, steps=6, sweep_steps=6, workers=0, log=lambda *_: None,
                               one_by_one_steps=4)
    out = capsys.readouterr().out
    regimes = [r["regime"] for r in rows]
    assert regimes[0].startswith("HF-style") and len(regimes) == 6
    assert [("cache" in r, "MLflow" in r) for r in regimes[1:]] == [(False, False)] * 3 + [(True, False), (True, True)]
    assert all(r["samples_per_s"] > 0 for r in rows)
    # every loop regime ran its full eval and its golden dump, and the table shows their times
    assert all(r["full_eval_s"] > 0 and r["golden_s"] > 0 for r in rows[1:])
    assert "| regime | samples/s |" in out and "full eval s | golden-64 s |" in out
    assert "MLflow tracking cost" in out
    # the one-by-one side ran 4 of 6 steps per trial and says it extrapolated
    assert "six trials x 6 steps" in out and "- side by side:" in out
    assert "ran 4 steps per trial, extrapolated to 6" in out
    assert summary["sweep_one_by_one_s"] > 0 and summary["sweep_side_by_side_s"] > 0
    assert summary["gflop_per_sample"] > 0


def test_flops_of_the_small_preset_match_the_issue():
    import yaml
    preset = yaml.safe_load(bench.PRESETS.read_text())["small"]
    assert 200e9 < bench.flops_per_sample(preset) < 240e9  # issue 8: ~224 GFLOP per small-preset sample


def test_bench_prints_the_long_caption_sweep_against_the_short_one(capsys):
    _, summary = bench.main("tiny", images=120, batch=8, steps=6, sweep_steps=6, workers=0, log=lambda *_: None,
                            parts="sweep,sweep_long")
    out = capsys.readouterr().out
    assert summary["sweep_long_s"] > 0 and summary["sweep_side_by_side_s"] > 0
    assert "captions ~3x as long" in out and "x the ~12-token sweep (target <= 1.3x)" in out


@pytest.mark.slow  # inductor compiles the tiny decoder on CPU: ~40 s
def test_bench_prints_the_compiled_sweep(capsys):
    _, summary = bench.main("tiny", images=120, batch=8, steps=6, sweep_steps=6, workers=0, log=lambda *_: None,
                            parts="sweep_compiled")
    assert summary["sweep_compiled_s"] > 0 and "sweep_side_by_side_s" not in summary
    assert "- side by side, train.compile=on" in capsys.readouterr().out


def test_longer_captions_repeat_each_caption_over_the_same_images(tmp_path):
    import json

    data = bench.write_images(tmp_path, 6, workers=1)
    longer = json.loads(bench.with_longer_captions(data, 3).read_text())
    for short, long in zip(json.loads(data.read_text()), longer):
        assert long["image"] == short["image"] and long["id"] == short["id"]
        assert long["conversations"][1]["value"] == " ".join([short["conversations"][1]["value"]] * 3)


def test_the_p1_epoch_runs_the_spec_config_and_times_its_golden_dumps(tmp_path):
    """The spec's P1 config, shrunk to the tiny preset's scale (CPU): one epoch, a golden dump at each save."""
    paths = bench.build_preset("tiny", tmp_path / "model", log=lambda *_: None)
    p1 = bench.p1_epoch(paths, tmp_path, 0, lambda *_: None, records=60, overrides=(
        "data.max_samples=0", "data.eval_size=20", "data.golden_size=6", "data.golden_counts=[2,2,2]",
        "train.save_every=5", "train.quick_eval_steps=5", "train.quick_eval_size=8", "eval.max_new_tokens=4",
        "eval.batch_size=8"))  # the config's train.precision=bf16, on CPU
    assert p1["steps"] == 10 and p1["golden_dumps"] == 2  # 40 train samples / 4; a dump at each save
    assert 0 < p1["steps_s"] + p1["golden_s"] + p1["full_eval_s"] <= p1["epoch_s"]
