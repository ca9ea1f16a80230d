-- One PostgreSQL for the team: MLflow's backend store and the Optuna studies of the sweep workers.
CREATE USER mlflow WITH PASSWORD 'mlflow';
CREATE DATABASE mlflow OWNER mlflow;
CREATE USER optuna WITH PASSWORD 'optuna';
CREATE DATABASE optuna OWNER optuna;
