"""The golden captions as a person sees them: `mlflow server` on 127.0.0.1 over a finished demo run,
the run's golden table opened in headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): every one of the 64 rows shows its image thumbnail and its caption text. The screenshot is
kept as a test artifact (test-artifacts/golden_table.png)."""
import json
import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.servers import mlflow_server
from vlmtrack.data.golden import latest_golden_table

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def ui(demo_run, tmp_path):
    with mlflow_server(demo_run["uri"], tmp_path / "server.log") as url:
        yield url


def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1600,12000"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


def settled_thumbnails(driver, wait, css: str) -> set[str]:
    """The page's thumbnails once the table has stopped changing and every image has loaded."""
    from selenium.webdriver.common.by import By

    last, stable = None, 0
    for _ in range(200):
        # rows render progressively (and images lazily): scroll through, then wait for a still page
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight); window.scrollTo(0, 0);")
        imgs = driver.find_elements(By.CSS_SELECTOR, css)
        now = [(i.get_attribute("src"), i.get_attribute("naturalWidth")) for i in imgs]
        stable = stable + 1 if now and now == last and all(w not in (None, "0") for _, w in now) else 0
        if stable >= 5:
            return {src for src, _ in now}
        last = now
        time.sleep(0.3)
    raise AssertionError(f"the table did not settle: {last}")


def test_golden_table_shows_64_thumbnails_and_captions(ui, demo_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(demo_run["uri"])
    exp = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([exp.experiment_id])
    tables = sorted(a["path"] for a in json.loads(run.data.tags["mlflow.loggedArtifacts"]) if a["type"] == "table")
    table_path = latest_golden_table(64)  # the latest save's captions, under one name for the whole run
    assert table_path in tables
    expected = json.load(open(client.download_artifacts(run.info.run_id, table_path, str(tmp_path))))
    captions = {row[expected["columns"].index("pred_text")] for row in expected["data"]}

    driver = browser(tmp_path)
    thumbs = "img[src*='golden%2Fimages']"
    try:
        driver.get(f"{ui}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts/{table_path}")
        wait = WebDriverWait(driver, 90)
        toggle = wait.until(EC.presence_of_element_located((By.XPATH, "//label[.//*[text()='View as table']]")))
        if "checked" not in toggle.get_attribute("class"):  # the table view, not the raw JSON
            toggle.click()
        seen_text, seen_images = set(), set()
        for page in range(64):  # the table paginates by the height it has
            seen_images |= settled_thumbnails(driver, wait, thumbs)
            body = driver.find_element(By.TAG_NAME, "body").text
            seen_text |= {c for c in captions if c in body}
            if page == 0:
                ARTIFACTS.mkdir(exist_ok=True)
                driver.save_screenshot(str(ARTIFACTS / "golden_table.png"))
            nxt = driver.find_element(By.CSS_SELECTOR, "li[title='Next Page']")
            if "disabled" in nxt.get_attribute("class"):
                break
            first = driver.find_element(By.CSS_SELECTOR, thumbs).get_attribute("src")
            nxt.find_element(By.TAG_NAME, "button").click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, thumbs).get_attribute("src") != first)
        assert len(seen_images) == 64, f"{len(seen_images)} thumbnails rendered"
        assert seen_text == captions, captions - seen_text
    finally:
        driver.quit()
