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
