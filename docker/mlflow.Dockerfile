# The team's MLflow tracking server: PostgreSQL backend store, S3-compatible (MinIO) artifact store, and
# MLflow's basic-auth app (the [auth] extra) with its user store on the mlflow-auth volume.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1
RUN pip install "mlflow[auth]==3.17.2" "psycopg[binary]" boto3 && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /var/lib/mlflow-auth && chown mlflow:mlflow /var/lib/mlflow-auth
USER mlflow
EXPOSE 5000
