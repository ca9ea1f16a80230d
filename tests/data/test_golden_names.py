"""The golden artifacts' names come from one place (data/golden.py) and parse back to their step."""
from vlmtrack.data.golden import golden_table_file, golden_table_step, qual_file, qual_files


def test_golden_table_name_round_trips_to_its_step():
    name = golden_table_file(120, 64)
    assert name == "golden/step_120_golden64.json"
    assert golden_table_step(name) == 120
    assert golden_table_step(f"artifacts/{name}") == 120  # MLflow may list it under a longer path


def test_other_artifacts_have_no_golden_step():
    for name in ("golden/step_120_golden64.jsonl", "sweep/summary.json", "golden/step_x_golden64.json",
                 "qual/step_120_golden64.jsonl"):
        assert golden_table_step(name) is None


def test_qual_files_are_found_in_step_order(tmp_path):
    for step in (10, 2, 100):
        qual_file(tmp_path, step, 6).parent.mkdir(exist_ok=True)
        qual_file(tmp_path, step, 6).write_text("{}\n")
    (tmp_path / "qual" / "notes.jsonl").write_text("")
    assert qual_file(tmp_path, 2, 6) == tmp_path / "qual" / "step_2_golden6.jsonl"
    assert [p.name for p in qual_files(tmp_path)] == ["step_2_golden6.jsonl", "step_10_golden6.jsonl",
                                                        "step_100_golden6.jsonl"]
