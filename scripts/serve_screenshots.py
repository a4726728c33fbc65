"""Screenshots of lmlab serve's two views for the README (docs/images/), taken in headless Chromium.

    python scripts/serve_screenshots.py RUN_OR_MODEL ... [--out docs/images]

Starts ``lmlab serve`` with the given models on a free port, samples the same prompt from every model and
scores the same PubMed abstract, and saves serve-compare.png and serve-surprisal.png.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PROMPT = "the company said"
TEXT = ("Hypertension is a major risk factor for stroke and heart disease. In this randomized trial, patients "
        "with type 2 diabetes received either the new drug or placebo for twelve weeks, and blood pressure fell "
        "more in the treated group.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lmlab", "serve", *args.models, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/api/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--window-size=1280,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 300)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CLASS_NAME, "model"))
        n = len(driver.find_elements(By.CLASS_NAME, "model"))
        driver.find_element(By.ID, "prompt").clear()
        driver.find_element(By.ID, "prompt").send_keys(PROMPT)
        driver.find_element(By.ID, "ban_unk").click()
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: len(d.find_elements(By.CLASS_NAME, "sample")) == n)
        args.out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out / "serve-compare.png"))
        driver.find_element(By.ID, "tab-surprisal").click()
        driver.find_element(By.ID, "text").send_keys(TEXT)
        driver.find_element(By.ID, "score").click()
        wait.until(lambda d: len(d.find_elements(By.CLASS_NAME, "score")) == n)
        token = driver.find_elements(By.CLASS_NAME, "tok")[12]
        driver.execute_script("const r = arguments[0].getBoundingClientRect(); arguments[0].dispatchEvent(new MouseEvent("
                              "'mouseover', {bubbles: true, clientX: r.left + 4, clientY: r.bottom}))", token)
        driver.save_screenshot(str(args.out / "serve-surprisal.png"))
        driver.quit()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
