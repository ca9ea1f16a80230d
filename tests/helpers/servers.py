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
def mlflow_server(backend_uri: str, log_path: Path, *extra: str, port: int | None = None, jobs: bool = True):
    """Yields the server's URL once /health answers; stops the server afterwards. A given `port` lets a
    test start the same server again where its clients expect it; `jobs=False` leaves out MLflow's job
    runner (a dozen processes vlmtrack does not use), for a faster start."""
    port = port or free_port()
    env = dict(os.environ, **({} if jobs else {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", backend_uri, "--workers", "1", *extra],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start:\n" + log_path.read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
