import pytest

from vlmtrack.config import ConfigError, flatten, load_config


def test_defaults_follow_the_spec():
    cfg = load_config()
    assert cfg.data.len_buckets == [0, 10, 20, 9999] and cfg.data.eval_size == 2000
    assert cfg.data.golden_counts == [24, 20, 20] and cfg.data.golden_seed == 123
    assert cfg.model.num_latents == 64 and cfg.data.max_seq_len == 512


def test_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 5e-5\nmodel:\n  vision_ln: true\n")
    cfg = load_config(p, ["train.lr=2e-4", "model.vision_ln=false", "data.len_buckets=[0,5,30,9999]",
                          "train.batch_size=8"])
    assert cfg.train.lr == 2e-4 and cfg.model.vision_ln is False and cfg.train.batch_size == 8
    assert cfg.data.len_buckets == [0, 5, 30, 9999]
    assert flatten(cfg)["train.lr"] == 2e-4


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1e-4", "did you mean 'train.lr'"),
    ("trian.lr=1e-4", "did you mean 'train'"),
    ("train.batch_size=four", "train.batch_size: expected an integer"),
    ("model.vision_ln=maybe", "expected true/false"),
    ("train.lr=-1e-4", "train.lr must be positive"),
    ("data.len_buckets=[0,20,10,9999]", "strictly increasing"),
    ("data.max_samples=1000", "leaves no training data"),
    ("lr=1", "section.key"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  num_epoch: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'train.num_epoch'; did you mean 'train.num_epochs'"):
        load_config(p)


def test_a_relative_config_is_found_in_the_callers_folder_first(tmp_path, monkeypatch):
    """`mlflow run <project> -P config=my.yaml` runs inside the project: my.yaml is the caller's ($PWD)."""
    from vlmtrack.config import user_file

    caller, project = tmp_path / "caller", tmp_path / "project"
    (caller / "configs").mkdir(parents=True)
    (project / "configs").mkdir(parents=True)
    (caller / "configs" / "mine.yaml").write_text("train:\n  lr: 0.5\n")
    (project / "configs" / "demo.yaml").write_text("train:\n  lr: 0.25\n")
    (project / "configs" / "mine.yaml").write_text("train:\n  lr: 0.125\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("PWD", str(caller))
    assert load_config("configs/mine.yaml").train.lr == 0.5  # the caller's, though the project has one
    assert load_config("configs/demo.yaml").train.lr == 0.25  # the project's default, the caller has none
    assert user_file(str(project / "configs" / "demo.yaml")) == project / "configs" / "demo.yaml"
    with pytest.raises(ConfigError, match=f"'configs/none.yaml' does not exist \\(looked in {caller} and {project}\\)"):
        load_config("configs/none.yaml")
