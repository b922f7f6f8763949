"""Drive the page of `alexsearch serve` in headless Chromium (Debian's chromium and
chromium-driver, nothing downloaded): start a real server, upload a photo through the
file input, click a neighbour, and take a screenshot. tests/test_serve_browser.py runs
these steps and checks them; run as a script it takes the README's screenshot:

    python scripts/browse_shot.py --index demo/index-bvlc --photo demo/shapes/red_circles/000.jpg \
        --out docs/serve.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
WAIT_S = 300  # a net against hangs on a busy machine, never an assertion on speed


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths of an installed Chromium, None when there is none."""
    browser = next((p for p in CHROMIUM if os.access(p, os.X_OK)), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER if os.access(p, os.X_OK)), shutil.which("chromedriver"))
    return (browser, driver) if browser and driver else None


def start_server(index, weights=None, env=None) -> tuple[subprocess.Popen, str]:
    """A real `alexsearch serve` on a free loopback port: (process, page URL). `index`
    may be a list: several indexes served without merging."""
    several = index if isinstance(index, (list, tuple)) else [index]
    cmd = [sys.executable, "-m", "alexsearch", "serve", "--port", "0"]
    cmd += [a for ix in several for a in ("--index", str(ix))]
    if weights:
        cmd += ["--weights", str(weights)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if " at http" not in line:
        p.kill()
        raise RuntimeError(f"serve did not start: {line}{p.stderr.read()}")
    return p, line.split(" at ")[1].split()[0]


def stop_server(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()


def browser(width: int = 1200, height: int = 900):
    """Headless Chromium under Selenium, pointed at the system's browser and driver;
    Selenium Manager is kept offline (SE_OFFLINE), so nothing is downloaded."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("no Chromium found (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: condition(d), message=f"waiting for {what}"
    )


def hits(driver) -> list[int]:
    """The ids of the results on the page, in order (read in one go: the grid may be
    re-rendered meanwhile)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .hit')].map(e => Number(e.dataset.id))"
    )


def url_state(driver) -> dict:
    return {k: v[-1] for k, v in parse_qs(urlparse(driver.current_url).query).items()}


def upload(driver, url: str, photo, k: int) -> list[int]:
    """Open the page, choose k, upload `photo` through the file input: the neighbours' ids."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url)
    wait_for(driver, lambda d: d.find_element(By.ID, "summary").text, "the index summary")
    Select(driver.find_element(By.ID, "k")).select_by_value(str(k))
    driver.find_element(By.ID, "file").send_keys(str(Path(photo).resolve()))
    wait_for(driver, lambda d: len(hits(d)) == k, f"{k} results")
    return hits(driver)


def click_hit(driver, rank: int = 0) -> tuple[int, list[int]]:
    """Click the neighbour at `rank` (0: nearest): (its id, its own neighbours' ids)."""
    from selenium.webdriver.common.by import By

    before = hits(driver)
    chosen = before[rank]
    driver.find_elements(By.CSS_SELECTOR, ".hit")[rank].click()

    def moved(d):
        q = d.find_element(By.ID, "query").get_attribute("data-id")
        now = hits(d)
        return q == str(chosen) and now and now != before and chosen not in now

    wait_for(driver, moved, f"the neighbours of {chosen}")
    return chosen, hits(driver)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--photo", required=True, help="the photo to upload")
    ap.add_argument("--weights")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--click", action="store_true", help="screenshot after clicking a result")
    ap.add_argument("--out", default="docs/serve.png")
    a = ap.parse_args()
    server, url = start_server(a.index, a.weights)
    driver = browser(1200, 820)
    try:
        upload(driver, url, a.photo, a.k)
        if a.click:
            click_hit(driver, 0)
        time.sleep(1.0)  # let the thumbnails decode
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(a.out)
        print(f"wrote {a.out}")
    finally:
        driver.quit()
        stop_server(server)


if __name__ == "__main__":
    main()
