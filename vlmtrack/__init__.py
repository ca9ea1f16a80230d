"""vlmtrack: train and judge the connector of a vision-language model, tracked in MLflow."""

__version__ = "0.1.0"
