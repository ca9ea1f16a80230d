"""docker/ is checked on paper (no Docker engine here): every command, path and variable the files and
README's Docker section use exists in the project (or in MLflow) and means what the files assume;
credentials come only from the git-ignored docker/.env."""
import base64
import configparser
import hashlib
import hmac
import importlib.metadata
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from vlmtrack.cli import build_parser
from vlmtrack.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
REQUIRED = "see docker/.env.example"


def compose_text() -> str:
    return (DOCKER / "compose.yaml").read_text()


def env_example() -> dict[str, str]:
    """docker/.env.example's keys and values; `# KEY=value` lines are optional keys, value kept."""
    pairs = re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", (DOCKER / ".env.example").read_text(), re.M)
    return dict(pairs)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, as `docker compose config` resolves them."""
    def one(m):
        name, kind, arg = m.groups()
        value = env.get(name, "")
        if kind == "?" and not value:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        return value or (arg if kind == "-" else "")
    return VAR.sub(one, text).replace("$$", "$")


def filled_env() -> dict[str, str]:
    """The example with every empty value filled in, as a user's docker/.env would be."""
    return {k: v or f"pw-{k.lower()}" for k, v in env_example().items()}


def compose(env: dict[str, str] | None = None):
    return yaml.safe_load(interpolate(compose_text(), env or filled_env()))


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


def test_every_variable_comes_from_the_ignored_env_file_and_none_has_a_value_in_the_repo():
    example, used = env_example(), VAR.findall(compose_text())
    assert {name for name, _, _ in used} <= set(example), {n for n, _, _ in used} - set(example)
    for name, kind, arg in used:  # a missing secret stops compose with a pointer, never a silent default
        assert kind == "?" and arg == REQUIRED or kind == "-" and not re.search("PASSWORD|SECRET", name), name
    secrets = [k for k in example if re.search("PASSWORD|SECRET", k)]
    assert len(secrets) == 7 and all(example[k] == "" for k in secrets)  # placeholders only, no secret
    with pytest.raises(AssertionError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        compose({**filled_env(), "MLFLOW_AUTH_ADMIN_PASSWORD": ""})
    for service in yaml.safe_load(compose_text())["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET", key):
                assert VAR.fullmatch(str(value)), (key, value)  # every credential is a ${...} from docker/.env
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    shown = subprocess.run(["git", "check-ignore", "-q", "docker/.env.example"], cwd=REPO)
    assert ignored.returncode == 0 and shown.returncode == 1


def test_tracking_server_uses_postgres_minio_and_basic_auth_as_declared():
    c = compose()
    mlflow = c["services"]["mlflow"]
    cmd, env = mlflow["command"], mlflow["environment"]
    assert "--serve-artifacts" in cmd and "--app-name basic-auth" in cmd and "--backend-store-uri" not in cmd
    assert re.search(r"--artifacts-destination s3://(\S+)", cmd).group(1) in c["services"]["minio-init"]["entrypoint"][-1]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    minio = c["services"]["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    assert c["services"]["minio-init"]["environment"] == minio
    # every PostgreSQL URL names a user the init script creates, with the password postgres is given
    init = (DOCKER / "postgres-init.sh").read_text()
    pg_env = c["services"]["postgres"]["environment"]
    uris = [env["MLFLOW_BACKEND_STORE_URI"],
            *(a for s in c["services"].values() for a in s.get("command", []) if "postgresql://" in a)]
    assert len(uris) == 3
    for uri in uris:
        user, password, db = re.search(r"postgresql://(\w+):([\w-]+)@postgres:5432/(\w+)$", uri).groups()
        var = f"{user.upper()}_DB_PASSWORD"
        assert pg_env[var] == password
        assert f"CREATE USER {user} WITH PASSWORD :'{user}_password';" in init
        assert f'-v {user}_password="${var}"' in init and f"CREATE DATABASE {db} OWNER {user};" in init


def test_basic_auth_config_is_what_mlflow_reads():
    import mlflow.environment_variables as ev

    c = compose()
    env, volumes = c["services"]["mlflow"]["environment"], c["services"]["mlflow"]["volumes"]
    mounted = dict(v.split(":")[:2][::-1] for v in volumes)  # container path -> source
    assert mounted[env["MLFLOW_AUTH_CONFIG_PATH"]] == "./basic_auth.ini"
    ini = configparser.ConfigParser()
    ini.read(DOCKER / "basic_auth.ini")
    auth = ini["mlflow"]
    assert auth["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert auth["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert "admin_password" not in auth and "admin_username" not in auth  # from docker/.env, through env
    db = re.fullmatch(r"sqlite:///(/.+)/basic_auth\.db", auth["database_uri"]).group(1)
    assert mounted[db] == "mlflow-auth"  # the user store outlives the container
    assert f"chown mlflow:mlflow {db}" in (DOCKER / "mlflow.Dockerfile").read_text()  # writable by the server
    # every MLFLOW_ variable set on the server or trainers is one MLflow reads
    server_envvars = {"MLFLOW_BACKEND_STORE_URI"}  # `mlflow server --backend-store-uri`'s envvar
    known = {v.name for v in vars(ev).values() if isinstance(v, ev._EnvironmentVariable)} | server_envvars
    trainer = c["services"]["train"]["environment"]
    assert {k for k in [*env, *trainer] if k.startswith("MLFLOW_")} <= known
    assert "MLFLOW_BACKEND_STORE_URI" in (Path(importlib.util.find_spec("mlflow.cli").origin)).read_text()


def test_readme_docker_section_uses_what_exists():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## A team stack with Docker"):]
    section = section[:section.index("\n## ", 5)]
    c, example = compose(), env_example()
    for line in re.findall(r"^docker compose -f (\S+) (.+?)\s+#", section, re.M):
        path, args = line
        assert (REPO / path).resolve() == DOCKER / "compose.yaml"
        profile = re.search(r"--profile (\w+)", args)
        named = re.search(r"up(?: -d)? ([\w-]+)$", args.strip())
        if named:
            assert named.group(1) in c["services"]
        if profile:
            assert any(profile.group(1) in s.get("profiles", []) for s in c["services"].values())
    assert "cp docker/.env.example docker/.env" in section
    set_somewhere = set(example) | {k for s in c["services"].values() for k in s.get("environment") or {}}
    for name in set(re.findall(r"\b(MLFLOW_[A-Z_]+|[A-Z]+_DB_PASSWORD)\b", section)):
        assert name in set_somewhere, name
    # the snippet for making users: MLflow's own app client and the calls it names
    assert "basic-auth" in {e.name for e in importlib.metadata.entry_points(group="mlflow.app")}
    auth_dir = Path(importlib.util.find_spec("mlflow.server").submodule_search_locations[0]) / "auth"
    client = (auth_dir / "client.py").read_text()
    for call in re.findall(r"auth\.(\w+)\(", section):
        assert f"def {call}(" in client, call
    assert "def get_app_client(" in (auth_dir.parent / "__init__.py").read_text()


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
        assert s["environment"]["MLFLOW_TRACKING_USERNAME"] and s["environment"]["MLFLOW_TRACKING_PASSWORD"]


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
    assert f'"mlflow[auth]=={mlflow.__version__}"' in mlflow_image  # [auth]: Flask-WTF, basic-auth's CSRF
    assert "psycopg" in mlflow_image and "boto3" in mlflow_image
    assert re.findall(r"^USER (\S+)", mlflow_image, re.M)[-1] == "mlflow"


def test_a_trainers_caches_outlive_its_container(monkeypatch):
    """The Hugging Face downloads, the vision feature cache and the compiled Triton kernels sit where the
    image's environment puts them, and each of those folders is a named volume of every trainer: a new
    container (each sweep worker, each `up train`) finds them instead of rebuilding them."""
    from vlmtrack.model.feature_cache import cache_root

    env = dict(re.findall(r"^\s+(?:ENV\s+)?([A-Z_]+)=(\S+?)(?: \\)?$", (DOCKER / "Dockerfile").read_text(), re.M))
    monkeypatch.setenv("VLMTRACK_CACHE", env["VLMTRACK_CACHE"])
    cache_dirs = {env["HF_HOME"], env["TRITON_CACHE_DIR"], str(cache_root("").parent)}
    c = compose()
    for name, service in c["services"].items():
        if service.get("image") != "vlmtrack:gpu":
            continue
        mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        for folder in cache_dirs:
            assert mounted.get(folder) in c["volumes"], (name, folder)


# -- the pieces that run outside Docker here too ----------------------------------------------------

def scram_matches(verifier: str, password: str) -> bool:
    """PostgreSQL's SCRAM-SHA-256$iter:salt$StoredKey:ServerKey against a password (RFC 5802)."""
    head, keys = verifier.split("$", 1)[1].split("$")
    iterations, salt = head.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    return base64.b64encode(stored).decode() == keys.split(":")[0]


def test_postgres_init_script_creates_the_users_with_their_passwords():
    from tests.helpers.postgres import postgres_cluster

    passwords = {"MLFLOW_DB_PASSWORD": "it's; DROP DATABASE x; --", "OPTUNA_DB_PASSWORD": 'a"b\\c:d'}
    with postgres_cluster() as (_, port):
        env = dict(os.environ, POSTGRES_USER="postgres", PGHOST="127.0.0.1", PGPORT=str(port), **passwords)
        done = subprocess.run(["bash", str(DOCKER / "postgres-init.sh")], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

        def query(sql):
            return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
                                   "-tAc", sql], capture_output=True, text=True, check=True).stdout.split()
        assert query("SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
                     "WHERE datname IN ('mlflow', 'optuna', 'x') ORDER BY 1") == ["mlflow=mlflow", "optuna=optuna"]
        for user in ("mlflow", "optuna"):
            (verifier,) = query(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
            assert scram_matches(verifier, passwords[f"{user.upper()}_DB_PASSWORD"])
            assert not scram_matches(verifier, "mlflow")


@pytest.mark.slow
def test_the_basic_auth_server_admits_only_its_users(tmp_path, monkeypatch):
    """docker/basic_auth.ini and the server's variables on a real `mlflow server --app-name basic-auth`
    (its user store moved to tmp_path), and README's snippet for making a user, run as written."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs the mlflow[auth] extra (Flask-WTF)")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tests.helpers.servers import free_port, mlflow_server
    from vlmtrack.tracking.mlflow_tracker import MlflowTracker

    ini = (DOCKER / "basic_auth.ini").read_text()
    db = re.search(r"^database_uri = (\S+)$", ini, re.M).group(1)
    (tmp_path / "basic_auth.ini").write_text(ini.replace(db, f"sqlite:///{tmp_path}/basic_auth.db"))
    port, admin = free_port(), ("admin", "an-admin-password-for-the-test")
    server_env = {**compose()["services"]["mlflow"]["environment"],
                  "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
                  "MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
                  "MLFLOW_SERVER_ALLOWED_HOSTS": f"mlflow:5000,127.0.0.1:{port}"}
    for key in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_SERVER_ALLOWED_HOSTS"):
        monkeypatch.setenv(key, server_env[key])
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "server.log", "--app-name", "basic-auth",
                       "--artifacts-destination", str(tmp_path / "artifacts"), port=port, jobs=False) as url:
        import requests

        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(f"{url}/health").status_code == 200  # the healthcheck needs no user
        assert requests.get(search).status_code == 401
        assert requests.get(search, auth=("admin", "a-wrong-password-123")).status_code == 401
        assert requests.get(search, auth=admin).status_code == 200
        assert requests.get(search, auth=admin, headers={"Host": "mlflow:5000"}).status_code == 200
        assert requests.get(search, auth=admin, headers={"Host": "evil.example:5000"}).status_code == 403

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        first = MlflowTracker(tracking_uri=url, experiment="vlmtrack", run_name="admin-run")
        first.log_metrics({"train_loss": 1.5}, 1)
        first.finish()
        readme = (REPO / "README.md").read_text()
        snippet = re.search(r"```python\n(from mlflow import MlflowClient.+?)```", readme, re.S).group(1)
        exec(snippet.replace("http://HOST:5000", url), {})
        from mlflow.server import get_app_client
        get_app_client("basic-auth", tracking_uri=url).create_user("bob", "bob-has-no-grant")

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-password-of-12-or-more")
        ana = MlflowTracker(tracking_uri=url, experiment="vlmtrack", run_name="ana-run")
        ana.log_metrics({"train_loss": 0.5}, 1)
        ana.finish()
        assert ana.errors == []
        assert MlflowClient(url).get_run(ana.run_id).data.metrics == {"train_loss": 0.5}
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-has-no-grant")
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|[Pp]ermission"):  # READ by default
            MlflowTracker(tracking_uri=url, experiment="vlmtrack", run_name="bob-run")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "nobody")
        with pytest.raises(MlflowException, match="401|[Uu]nauthorized|credentials"):
            MlflowTracker(tracking_uri=url, experiment="vlmtrack", run_name="no-user")
