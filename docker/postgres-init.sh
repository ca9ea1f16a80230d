#!/bin/bash
# One PostgreSQL for the team: MLflow's backend store and the Optuna studies of the sweep workers.
# The postgres image runs this once, on the first start of an empty data volume. The passwords come
# from docker/.env; psql's :'var' quotes them, so any character is safe here.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v mlflow_password="$MLFLOW_DB_PASSWORD" -v optuna_password="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE USER mlflow WITH PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE USER optuna WITH PASSWORD :'optuna_password';
CREATE DATABASE optuna OWNER optuna;
SQL
