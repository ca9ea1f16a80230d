"""The captioning model: a connector checkpoint packaged as an MLflow pyfunc that loads anywhere MLflow
does (`mlflow.pyfunc.load_model`, `mlflow models serve`), built by tracking/promote.py.

    predict(pd.DataFrame({"image": [<image file bytes>, ...]}), params={"max_new_tokens": 32})
        -> pd.DataFrame({"caption": [...]})

The `image` column is binary: raw bytes in-process, base64 in a served request (MLflow's scoring server
decodes it by the signature). The model never opens a path a client sends. The model's files:

    connector/     connector.safetensors + connector.json (no optimizer state)
    config.yaml    the run's resolved config: shapes and the golden settings generation starts from
    captioner.json how to find the frozen towers, the instruction, where the checkpoint came from
    llm/, vision/  the towers themselves, when small enough to bundle (the embedded demo's: ~2 MB each)
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

CONNECTOR, CONFIG, SPEC, TOWERS = "connector", "config", "captioner", ("llm", "vision")
TOWER_WHAT = {"llm": "LLM", "vision": "vision tower"}


def tower_location(spec: dict, which: str, artifacts: dict) -> tuple[str, str | None]:
    """(what to load, hub revision) for one tower: the bundled copy, else the recorded path or hub id."""
    if which in artifacts:
        return artifacts[which], None
    tower = spec["towers"][which]
    return tower["ref"], tower.get("revision")


def tower_missing(spec: dict, which: str, error: Exception) -> str:
    """Why a tower would not load and how to make it available, in one message."""
    tower = spec["towers"][which]
    if tower["kind"] == "hub":
        how = (f"it is the hub model '{tower['ref']}' at revision {tower.get('revision') or 'main'}: allow network "
               f"access to the hub, or fetch it first (huggingface-cli download {tower['ref']}"
               + (f" --revision {tower['revision']}" if tower.get("revision") else "") + ")")
    else:
        how = (f"it was not bundled ({tower.get('why', 'a local folder')}) and is looked for at '{tower['ref']}': "
               "copy the folder there on this machine, or promote again with the tower bundled")
    return f"the captioning model's {TOWER_WHAT[which]} cannot be loaded: {how}. ({error})"


class CaptionModel(mlflow.pyfunc.PythonModel):
    """Images in, captions out. `model_config={"device": "cpu"}` at load picks the device (default: CUDA
    when there is one)."""

    def load_context(self, context) -> None:
        from vlmtrack.eval.captioner import load_captioner
        from vlmtrack.model.backbone import ModelLoadError, check_model_source

        artifacts = context.artifacts
        spec = json.loads(Path(artifacts[SPEC]).read_text())
        where = {which: tower_location(spec, which, artifacts) for which in TOWERS}
        for which, (ref, _) in where.items():
            try:
                check_model_source(ref, TOWER_WHAT[which])
            except ModelLoadError as e:
                raise ModelLoadError(tower_missing(spec, which, e)) from None
        device = (context.model_config or {}).get("device", "auto")
        self.captioner = load_captioner(Path(artifacts[CONNECTOR]), Path(artifacts[CONFIG]), where["llm"][0],
                                        where["vision"][0], spec["instruction"], device,
                                        {which: rev for which, (_, rev) in where.items()})

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from vlmtrack.data.dataset import image_from_bytes
        from vlmtrack.data.llava import DataError
        from vlmtrack.eval.captioner import RequestError

        if "image" not in getattr(model_input, "columns", ()):
            raise MlflowException("the input needs an 'image' column of image file bytes (base64 in a served "
                                  "request)", error_code=INVALID_PARAMETER_VALUE)
        try:
            images = [image_from_bytes(data, f"image {i}") for i, data in enumerate(model_input["image"])]
            captions = self.captioner.caption(images, **(params or {}))
        except (DataError, RequestError) as e:  # the client's images or parameters: a 4xx with the reason
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame({"caption": captions})
