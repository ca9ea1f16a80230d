"""The golden artifacts' names come from one place (data/golden.py) and parse back."""
from vlmtrack.data.golden import (history_golden_table, is_latest_golden_table, latest_golden_table,
                                  legacy_golden_table_step, qual_file, qual_files)


def test_the_latest_table_has_one_name_and_the_history_one_per_span_of_saves():
    assert latest_golden_table(64) == "golden/golden64.json"
    assert history_golden_table(1000, 64) == "golden/history/golden64_from_step_1000.json"
    assert is_latest_golden_table(latest_golden_table(64))
    assert is_latest_golden_table(f"artifacts/{latest_golden_table(6)}")  # MLflow may list it under a longer path
    for name in (history_golden_table(5, 64), "golden/golden64.jsonl", "sweep/golden_side_by_side.json",
                 "golden/step_120_golden64.json"):
        assert not is_latest_golden_table(name)


def test_a_run_logged_with_one_table_per_save_still_parses_to_its_step():
    assert legacy_golden_table_step("golden/step_120_golden64.json") == 120
    for name in ("golden/step_120_golden64.jsonl", "sweep/summary.json", "golden/step_x_golden64.json",
                 "qual/step_120_golden64.jsonl", latest_golden_table(64), history_golden_table(120, 64)):
        assert legacy_golden_table_step(name) is None


def test_qual_files_are_found_in_step_order(tmp_path):
    for step in (10, 2, 100):
        qual_file(tmp_path, step, 6).parent.mkdir(exist_ok=True)
        qual_file(tmp_path, step, 6).write_text("{}\n")
    (tmp_path / "qual" / "notes.jsonl").write_text("")
    assert qual_file(tmp_path, 2, 6) == tmp_path / "qual" / "step_2_golden6.jsonl"
    assert [p.name for p in qual_files(tmp_path)] == ["step_2_golden6.jsonl", "step_10_golden6.jsonl",
                                                        "step_100_golden6.jsonl"]
