# The MLflow tracking server of cluster/mlflow/: MLflow with the PostgreSQL driver (backend and
# authentication stores) and boto3 (artifacts on S3).
#
#   docker build -f cluster/docker/mlflow.Dockerfile -t REGISTRY/raynas-mlflow:0.1.0 cluster/docker
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true

RUN pip install "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.5"

RUN useradd --create-home --uid 1000 mlflow
USER 1000
WORKDIR /home/mlflow
