"""What is due after a step: a pure function of (prev step, step, run length, epoch length, train config)."""
from vlmtrack.config import TrainConfig
from vlmtrack.train.schedule import Due, crossed, due_at, progress_every


def cfg(**kw) -> TrainConfig:
    t = TrainConfig()
    t.log_every, t.save_every, t.quick_eval_steps, t.full_eval_every = 10, 50, 20, "never"
    t.run_golden_every, t.progress_percent, t.eval_at_steps = "save", 0.1, []
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def dues(t: TrainConfig, total: int = 100, per_epoch: int = 40, accum: int = 1) -> dict[str, list[int]]:
    """For each action, the steps at which it is due over a whole run of `accum` steps an update."""
    out: dict[str, list[int]] = {k: [] for k in Due.__dataclass_fields__}
    step = 0
    while step < total:
        prev, step = step, min(step + accum, total)
        due = due_at(prev, step, total, per_epoch, t)
        for k in out:
            if getattr(due, k):
                out[k].append(step)
    return out


def test_a_step_between_multiples_is_due_nothing():
    assert due_at(11, 12, 100, 40, cfg()) == Due()


def test_the_spec_schedule_over_a_run():
    d = dues(cfg())
    assert d["log"] == list(range(10, 101, 10))
    assert d["progress"] == list(range(10, 101, 10))  # every 10% of 100 steps
    assert d["epoch_end"] == [40, 80]
    assert d["quick_eval"] == [20, 40, 60, 80]  # never at the last step: the full eval runs there
    assert d["full_eval"] == [100]  # full_eval_every=never: the end of the run only
    assert d["save"] == [50, 100] and d["golden"] == [50, 100]


def test_evals_by_epoch_count_and_listed_steps():
    assert dues(cfg(full_eval_every="epoch"))["full_eval"] == [40, 80, 100]
    assert dues(cfg(full_eval_every="30"))["full_eval"] == [30, 60, 90, 100]
    assert dues(cfg(eval_at_steps=[25, 70]))["full_eval"] == [25, 70, 100]


def test_golden_modes():
    assert dues(cfg(run_golden_every="epoch"))["golden"] == [40, 80, 100]
    assert dues(cfg(run_golden_every="end"))["golden"] == [100]
    assert dues(cfg(run_golden_every="never"))["golden"] == []


def test_a_step_of_several_micro_batches_still_crosses_each_multiple():
    d = dues(cfg(save_every=10, eval_at_steps=[9]), total=20, per_epoch=7, accum=4)  # steps 4, 8, 12, 16, 20
    assert d["save"] == [12, 20] and d["log"] == [12, 20]
    assert d["epoch_end"] == [8, 16] and d["full_eval"] == [12, 20]
    assert crossed(8, 12, 10) and not crossed(10, 12, 10) and not crossed(0, 5, 0)


def test_progress_every_holds_a_fraction_of_the_run():
    assert progress_every(375, 0.1) == 38 and progress_every(5, 0.1) == 1 and progress_every(100, 1.0) == 100
