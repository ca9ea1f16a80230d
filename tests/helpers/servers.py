"""Local servers for tests: a free port on 127.0.0.1, and a real `mlflow server` over a given store."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(command: list[str], health_url: str, log_path: Path, env: dict | None = None, what: str = "server",
            tries: int = 120):
    """Starts `command`, waits until `health_url` answers 200 (failing at once if the process exits), yields,
    and stops the process afterwards."""
    proc = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    try:
        for _ in range(tries):
            try:
                if urllib.request.urlopen(health_url, timeout=1).status == 200:
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited:\n" + log_path.read_text()[-3000:]) from None
                time.sleep(0.5)
        else:
            raise RuntimeError(f"{what} did not start:\n" + log_path.read_text()[-3000:])
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def mlflow_server(backend_uri: str, log_path: Path, *extra: str, port: int | None = None, jobs: bool = True):
    """Yields the server's URL once /health answers; stops the server afterwards. A given `port` lets a
    test start the same server again where its clients expect it; `jobs=False` leaves out MLflow's job
    runner (a dozen processes vlmtrack does not use), for a faster start."""
    port = port or free_port()
    env = dict(os.environ, **({} if jobs else {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", backend_uri, "--workers", "1", *extra], f"{url}/health", log_path, env,
                 "mlflow server"):
        yield url


@contextmanager
def model_server(model_uri: str, log_path: Path, env: dict):
    """`mlflow models serve -m MODEL_URI --env-manager local` on a free port; yields its URL once /ping answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                  "--host", "127.0.0.1", "--port", str(port)], f"{url}/ping", log_path, env, "mlflow models serve",
                 tries=240):
        yield url
