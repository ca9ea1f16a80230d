"""The benchmark itself runs on CPU (tiny preset): every path it times exists without CUDA."""
import pytest

from vlmtrack.bench import run as bench

pytestmark = pytest.mark.slow


def test_bench_prints_the_table_on_cpu(capsys):
    rows, summary = bench.main("tiny", images=120, batch=8, steps=6, sweep_steps=4, workers=0, log=lambda *_: None)
    out = capsys.readouterr().out
    assert [r["regime"].split(":")[0] for r in rows] == ["HF-style", "vlmtrack", "vlmtrack"]
    assert all(r["samples_per_s"] > 0 for r in rows)
    assert "| regime | samples/s |" in out and "six trials" in out
    assert summary["sweep_side_by_side_s"] > 0 and summary["sweep_one_by_one_s"] > 0
    assert summary["gflop_per_sample"] > 0


def test_flops_of_the_small_preset_match_the_issue():
    import yaml
    preset = yaml.safe_load(bench.PRESETS.read_text())["small"]
    assert 200e9 < bench.flops_per_sample(preset) < 240e9  # issue 8: ~224 GFLOP per small-preset sample
