"""docker/ is checked on paper (no Docker engine here): every command, path and variable the files use
exists in the project and means what the files assume."""
import re
from pathlib import Path

import yaml

from vlmtrack.cli import build_parser
from vlmtrack.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services_health_and_volumes():
    c = compose()
    services = c["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "train", "sweep-worker-0", "sweep-worker-1"} <= set(services)
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert used <= set(c["volumes"]), used - set(c["volumes"])
    for s in services.values():
        if "build" in s:
            assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve().is_file()
        for v in s.get("volumes", []):
            if v.startswith("./"):
                assert (DOCKER / v.split(":")[0]).is_file(), v


def test_tracking_server_uses_postgres_and_minio_as_declared():
    c = compose()
    cmd = c["services"]["mlflow"]["command"]
    backend = re.search(r"--backend-store-uri (\S+)", cmd).group(1)
    assert backend.startswith("postgresql://") and "--serve-artifacts" in cmd
    assert re.search(r"--artifacts-destination s3://(\S+)", cmd).group(1) in c["services"]["minio-init"]["entrypoint"][-1]
    init = (DOCKER / "postgres-init.sql").read_text()
    for uri in [backend, *(a for s in c["services"].values() for a in s.get("command", []) if "postgresql://" in a)]:
        m = re.search(r"postgresql://(\w+):(\w+)@postgres:5432/(\w+)", uri)
        user, password, db = m.groups()
        assert f"CREATE USER {user} WITH PASSWORD '{password}'" in init and f"CREATE DATABASE {db} OWNER {user}" in init
    env = c["services"]["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == c["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"]


def test_container_commands_are_real_vlmtrack_commands():
    parser = build_parser()
    for name, s in compose()["services"].items():
        cmd = s.get("command")
        if not isinstance(cmd, list) or cmd[0] != "vlmtrack":
            continue
        args = parser.parse_args(cmd[1:])  # exits on an unknown subcommand or option
        assert (REPO / args.config).is_file(), (name, args.config)
        load_config(REPO / args.config, args.overrides)  # overrides name real, valid keys
        assert s["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_gpu_image_is_non_root_and_copies_existing_paths():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/pytorch:\S+cuda\S+", text, re.M)
    for line in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.M):
        for src in line.split():
            assert (REPO / src).exists(), src
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] != "root"
    assert 'CMD ["vlmtrack"' in text
    assert "psycopg" in text  # Optuna's PostgreSQL storage from the sweep workers
    mlflow_image = (DOCKER / "mlflow.Dockerfile").read_text()
    import mlflow
    assert f"mlflow=={mlflow.__version__}" in mlflow_image and "psycopg" in mlflow_image and "boto3" in mlflow_image
