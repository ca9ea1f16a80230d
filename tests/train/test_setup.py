"""set_up_run's record of the data a run was built from: under data.on_bad_record=skip, the records left out."""
import json

from tests.data.test_pipeline import web_set
from tests.helpers.tiny_models import tiny_config
from vlmtrack import cli
from vlmtrack.config import dump_yaml
from vlmtrack.data.pipeline import SKIPPED_RECORDS


def test_skip_trains_on_the_rest_and_records_what_it_left_out(tiny_paths, tmp_path, store, capsys):
    """A web set with bad metadata and missing images trains under data.on_bad_record=skip: the run's
    skipped_records.jsonl lists each left-out record by id with its reason, is an artifact of its MLflow run,
    and the metric data_skipped_records is their count."""
    def edit(records):
        records[2]["conversations"] = []
        records[4]["image"] = "gone/x.jpg"
        records[6]["image"] = "gone/y.jpg"

    records, cfg = web_set(tiny_paths, tmp_path, edit, on_bad_record="skip")
    cfg.train.train_steps, cfg.train.save_every, cfg.train.quick_eval_steps = 4, 4, 0
    cfg.data.num_workers, cfg.eval.run_ablations = 0, False
    dump_yaml(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(tmp_path / "cfg.yaml"), "--experiment", "web"]) == 0
    out = capsys.readouterr().out
    assert f"[data] data.on_bad_record=skip left out 3 record(s), listed with their reasons in " \
           f"{cfg.output_dir / SKIPPED_RECORDS}: id={records[2]['id']}: 'conversations' must be" in out
    listed = [json.loads(line) for line in (cfg.output_dir / SKIPPED_RECORDS).read_text().splitlines()]
    assert [(r["id"], r["image"]) for r in listed] == [
        (records[2]["id"], records[2]["image"]), (records[4]["id"], "gone/x.jpg"), (records[6]["id"], "gone/y.jpg")]
    assert listed[1]["reason"] == f"image 'gone/x.jpg' not found under {tiny_paths['images']}"
    (run,) = store.search_runs([store.get_experiment_by_name("web").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["data_skipped_records"] == 3
    assert SKIPPED_RECORDS in [f.path for f in store.list_artifacts(run.info.run_id)]
    split = json.loads(next((cfg.output_dir / "splits").glob("split_*.json")).read_text())
    assert split["num_train"] + split["num_eval"] == 157  # the split is built from the 157 that remain


def test_each_eval_batch_list_keeps_one_loader_until_the_run_is_released(tiny_paths, tmp_path):
    from vlmtrack.eval.evaluate import evaluate
    from vlmtrack.tracking.base import JsonlTracker
    from vlmtrack.train.setup import release, set_up_run
    from vlmtrack.train.trial import Trial

    cfg = tiny_config(tiny_paths, tmp_path / "out")
    cfg.data.num_workers = 1
    run = set_up_run([Trial(cfg, JsonlTracker())], log=lambda *_: None)
    quick = run.eval_loader(run.quick_batches)
    assert run.eval_loader(run.quick_batches) is quick and run.eval_loader(run.eval_batches) is not quick
    first, second = (evaluate(run.backbone, run.connectors(), run.eval_loader(run.quick_batches), run.device,
                              run.dtype)[0].metrics() for _ in range(2))
    assert first == second and first["eval_examples_total"] == cfg.train.quick_eval_size
    release(run)
    assert run.eval_loaders == {}
