"""lmlab serve in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

The test starts ``lmlab serve`` on a free port with two tiny PTB runs, submits a prompt and a text through the
page, and checks that both models' outputs and the coloured tokens appear with the values the API returns.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture
def server(tiny_runs, tmp_path):
    port = _free_port()
    runs = [str(tiny_runs["lstm"]), str(tiny_runs["transformer"])]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", "serve", *runs, "--port", str(port), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/api/models", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "serve.log").read_text())
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver here: apt-get install chromium chromium-driver (.ci/run does it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install 'lmlab[browser-test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--window-size=1300,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, css: str, count: int, timeout: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        lambda d: (found := d.find_elements(By.CSS_SELECTOR, css)) and len(found) >= count and found)


def test_page_compares_samples_and_colours_surprisal(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, ".model", 2)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("the company said")
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys("12")
    browser.find_element(By.ID, "generate").click()
    cards = _wait(browser, ".sample", 2)
    api = _post(server + "/api/sample", {"models": ["lstm", "transformer"], "prompt": "the company said", "max_tokens": 12})
    shown = {c.get_attribute("data-model"): c.find_element(By.CLASS_NAME, "text").text for c in cards}
    assert shown == {s["model"]: s["text"] for s in api["samples"]}  # same settings and seed: the same text
    if os.environ.get("LMLAB_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["LMLAB_SCREENSHOTS"]) / "serve-compare.png"))

    text = "the company said it expects sales to rise . the shares closed higher"
    browser.find_element(By.ID, "tab-surprisal").click()
    browser.find_element(By.ID, "text").send_keys(text)
    browser.find_element(By.ID, "score").click()
    cards = _wait(browser, ".score", 2)
    _wait(browser, "#status", 1)
    for card in cards:
        name = card.get_attribute("data-model")
        expected = _post(server + "/api/score", {"model": name, "text": text})
        tokens = card.find_elements(By.CLASS_NAME, "tok")
        assert [t.text for t in tokens] == [t["text"] for t in expected["tokens"]]
        assert all(t.get_attribute("style").startswith("background") for t in tokens)
        summary = card.find_element(By.CLASS_NAME, "summary").text
        assert f"ppl {expected['summary']['ppl']:.2f}" in summary
        assert f"{expected['summary']['bits_per_word']:.3f} bits/word" in summary
        oov = [t for t, e in zip(tokens, expected["tokens"]) if e["oov"]]
        assert oov and all("oov" in t.get_attribute("class") for t in oov)  # marked as out of vocabulary
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 50, clientY: 50}))", tokens[1])
    tip = browser.find_element(By.ID, "tip").text
    assert "bits" in tip and "rank" in tip and "top 5" in tip
    if os.environ.get("LMLAB_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["LMLAB_SCREENSHOTS"]) / "serve-surprisal.png"))

    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "score").click()
    status = _wait(browser, "#status.err", 1)[0].text
    assert status == "nothing to score: paste a text, upload a file or pick a corpus"  # one line, no trace


def test_serve_without_models_says_how_to_get_some(tmp_path, capsys, monkeypatch):
    from lmlab.cli import main

    monkeypatch.chdir(tmp_path)  # no study directory here
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lmlab: error: no models to serve: give PTB run directories or pretrained model names, or run "
                   "`lmlab run --preset smoke --out runs/smoke` first")
    assert main(["serve", "--study", str(tmp_path / "nowhere")]) == 2
    assert "study directory" in capsys.readouterr().err


def test_serve_finds_the_last_study_and_its_models(tiny_runs, tmp_path, monkeypatch):
    import shutil as sh

    from lmlab.serve.models import last_study, study_models

    study = tmp_path / "runs" / "smoke"
    (study / "ptb").mkdir(parents=True)
    sh.copytree(tiny_runs["lstm"], study / "ptb" / "lstm")
    (study / "study.log").write_text("")
    assert last_study(tmp_path) == study and study_models(study) == [str(study / "ptb" / "lstm")]
