"""A model that cannot be had is one clear line, at once: no minute of retries."""
import pytest

from vlmtrack.model.backbone import ModelLoadError, load_tokenizer


def test_missing_local_path():
    with pytest.raises(ModelLoadError, match="path './no/such/model' does not exist"):
        load_tokenizer("./no/such/model")


def test_hub_id_without_network_or_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="'Qwen/Qwen3-0.6B' is not in the HF cache and 127.0.0.1 cannot be reached"):
        load_tokenizer("Qwen/Qwen3-0.6B")


def test_remote_code_is_off_unless_the_config_turns_it_on(tiny_paths, monkeypatch):
    from transformers import AutoTokenizer

    from vlmtrack.model import backbone

    seen = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    backbone.load_tokenizer(str(tiny_paths["llm"]))
    backbone.load_tokenizer(str(tiny_paths["llm"]), trust_remote_code=True)
    assert [kw["trust_remote_code"] for kw in seen] == [False, True]
