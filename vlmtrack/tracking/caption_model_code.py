"""The captioning model as MLflow's "model from code": the file MLflow stores with the model and runs at load,
instead of unpickling an object (no pickled code in the store). vlmtrack itself travels as the model's
code_paths (tracking/promote.py)."""
from mlflow.models import set_model

from vlmtrack.tracking.caption_model import CaptionModel

set_model(CaptionModel())
