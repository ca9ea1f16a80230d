"""benchmarks/startup.py, image_existence.py and cache_open.py keep working: small sets built and their phases
timed."""
import importlib.util
from pathlib import Path

from tests.helpers.tiny_tokenizer import tiny_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "startup.py"


def load_script(path: Path = SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_startup_bench_times_every_data_phase(tmp_path, capsys):
    bench = load_script()
    data = bench.build_set(tmp_path, records=400, images=30, workers=2)
    assert bench.build_set(tmp_path, records=400, images=30, workers=2) == data  # reused, not rebuilt
    cfg = bench.run_config(data, tmp_path / "out", ["data.eval_size=150"])
    first, second = (bench.data_start(cfg, tiny_tokenizer()) for _ in range(2))
    phases = {"JSON read", "validation (records)", "tokenising (label lengths)", "split", "eval images decode",
              "golden set", "prepare_data (total)", "image existence (distinct images)"}
    assert set(first) == set(second) == phases
    hashes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[data]")]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # the second start reads back the same split and golden set


def test_the_existence_benchmark_finds_its_two_missing_images_every_way(tmp_path):
    results = load_script(SCRIPT.parent / "image_existence.py").measure(tmp_path, records=3000, images=900, repeats=1)
    assert len(results) == 3 and all(missing == 2 for _, missing in results.values())


def test_the_startup_bench_times_a_run_whose_cache_is_built_during_the_first_steps(tmp_path, capsys):
    """The GPU session's measurement, on CPU with the tiny preset: set_up_run phase by phase, the first two
    steps on the live tower, when the cache was ready and the first step that read it; then a second start
    that finds the cache complete."""
    bench = load_script()
    data = bench.build_set(tmp_path, records=3000, images=200, workers=2)
    bench.model_phases(data, tmp_path, "tiny", "during")
    out = capsys.readouterr().out
    table = out[out.index("set_up_run and first steps"):]
    for phase in ("model load", "feature cache estimate", "feature cache build", "set_up_run (total)",
                  "first step (graph capture)", "to the first step's end"):
        assert phase in table, phase
    assert "built on a thread while the first steps train" in out
    assert "[cache] the feature cache is complete: cached features from step" in out


def test_the_cache_open_benchmark_compares_the_three_ways_on_equal_hashes(tmp_path, capsys, monkeypatch):
    import sys

    bench = load_script(SCRIPT.with_name("cache_open.py"))
    monkeypatch.setattr(sys, "argv", ["cache_open.py", "--images", "40", "--kib", "2", "--root", str(tmp_path)])
    bench.main()  # asserts itself that the memo's hashes equal a full read's
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and " s |" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| every image read and hashed, one thread (before)",
                                                 f"| first open: hashed on {bench.fc.HASH_THREADS} threads, memo written",
                                                 "| a later open: one stat per image, memo read"]
