# The team's MLflow tracking server: PostgreSQL backend store, S3-compatible (MinIO) artifact store.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1
RUN pip install mlflow==3.17.2 "psycopg[binary]" boto3 && useradd --create-home --uid 1000 mlflow
USER mlflow
EXPOSE 5000
