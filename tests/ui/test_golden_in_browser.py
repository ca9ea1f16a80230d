"""The golden captions as a person sees them: `mlflow server` on 127.0.0.1 over a finished demo run,
the run's golden table opened in headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): every one of the 64 rows shows its image thumbnail and its caption text. The screenshot is
kept as a test artifact (test-artifacts/golden_table.png)."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(demo_run, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", demo_run["uri"], "--workers", "1"],
                            stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1600,2400"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


def test_golden_table_shows_64_thumbnails_and_captions(ui, demo_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(demo_run["uri"])
    exp = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([exp.experiment_id])
    tables = sorted(a["path"] for a in json.loads(run.data.tags["mlflow.loggedArtifacts"]) if a["type"] == "table")
    table_path = tables[-1]
    expected = json.load(open(client.download_artifacts(run.info.run_id, table_path, str(tmp_path))))
    captions = {row[expected["columns"].index("pred_text")] for row in expected["data"]}

    driver = browser(tmp_path)
    try:
        driver.get(f"{ui}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts/{table_path}")
        wait = WebDriverWait(driver, 60)
        toggle = wait.until(EC.element_to_be_clickable((By.XPATH, "//*[contains(text(), 'View as table')]")))
        toggle.click()
        seen_text, seen_images = set(), set()
        for _ in range(80):  # the table paginates by the height it has
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role='table'] img, table img"))
            time.sleep(0.5)
            for img in driver.find_elements(By.CSS_SELECTOR, "[role='table'] img, table img"):
                if img.get_attribute("naturalWidth") not in (None, "0"):
                    seen_images.add(img.get_attribute("src"))
            body = driver.find_element(By.TAG_NAME, "body").text
            seen_text |= {c for c in captions if c in body}
            ARTIFACTS.mkdir(exist_ok=True)
            if len(seen_images) <= 64 and not (ARTIFACTS / "golden_table.png").exists():
                driver.save_screenshot(str(ARTIFACTS / "golden_table.png"))
            nxt = [b for b in driver.find_elements(By.CSS_SELECTOR, "button[aria-label*='ext'], li[title*='Next'] button")
                   if b.is_enabled()]
            if not nxt:
                break
            nxt[0].click()
        assert len(seen_images) == 64, f"{len(seen_images)} thumbnails rendered"
        assert seen_text == captions
    finally:
        driver.quit()
