"""The page of `alexsearch serve` in a real browser: headless Debian Chromium driven by
Selenium (nothing downloaded) against a real server process on a free loopback port.
Skips with one line when no Chromium is installed (.ci/run installs it)."""

import pytest
from browse_shot import (
    browser,
    click_hit,
    find_chromium,
    hits,
    start_server,
    stop_server,
    upload,
    url_state,
    wait_for,
)
from make_shapes import make

import alexsearch

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium (apt-get install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory, init_ckpt):
    root = tmp_path_factory.mktemp("browse")
    make(root / "photos", per_class=3, seed=8)
    ix = root / "ix"
    alexsearch.build_index(root / "photos", index=ix, weights=init_ckpt, device="cpu", workers=0)
    proc, url = start_server(ix, init_ckpt)
    yield url, root
    stop_server(proc)


@pytest.fixture(scope="module")
def driver():
    d = browser()
    yield d
    d.quit()


def test_upload_click_and_back(served, driver, tmp_path):
    from selenium.webdriver.common.by import By

    url, root = served
    make(tmp_path / "new", per_class=1, seed=30)
    photo = sorted((tmp_path / "new").rglob("*.jpg"))[0]
    first = upload(driver, url, photo, k=6)
    assert len(first) == 6 and len(set(first)) == 6
    text = driver.find_element(By.ID, "results").text
    assert text.count("/") >= 6 and ".jpg" in text  # folder/file names under each photo
    assert "6 nearest" in driver.find_element(By.ID, "status").text
    chosen, theirs = click_hit(driver, 0)
    assert url_state(driver) == {"id": str(chosen), "k": "6"}
    assert len(theirs) == 6 and chosen not in theirs
    driver.save_screenshot(str(tmp_path / "serve.png"))
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    # Back: the upload's results again (from history); Forward: the click's
    driver.back()
    wait_for(driver, lambda d: hits(d) == first, "the upload's results after Back")
    assert "id" not in url_state(driver)
    driver.forward()
    wait_for(driver, lambda d: hits(d) == theirs, "the click's results after Forward")
    # a bookmarked search opens as it was
    driver.get(f"{url}?id={theirs[0]}&k=12")
    wait_for(driver, lambda d: len(hits(d)) == 12, "12 results from the URL alone")
    assert theirs[0] not in hits(driver)
    name = driver.find_element(By.ID, "query-name").text
    assert name.endswith(".jpg")


def test_collection_and_info_views(served, driver):
    from selenium.webdriver.common.by import By

    url, _ = served
    driver.get(url + "?view=collection")
    wait_for(
        driver,
        lambda d: "18 photos" in d.find_element(By.ID, "map-status").text,
        "the t-SNE map",
    )
    legend = driver.find_element(By.ID, "legend").text
    assert "red_circles (3)" in legend
    wait_for(
        driver,
        lambda d: d.execute_script("return document.getElementById('kernels').naturalWidth") > 0,
        "the kernels picture",
    )
    # a click on a point searches from that photo
    pt = driver.execute_script("const p = MAP.points[0]; return [p.id, p.cx, p.cy];")
    canvas = driver.find_element(By.ID, "map")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    scale = canvas.size["width"] / int(canvas.get_attribute("width"))
    from selenium.webdriver import ActionChains

    ActionChains(driver).move_to_element_with_offset(
        canvas,
        int(pt[1] * scale - canvas.size["width"] / 2),
        int(pt[2] * scale - canvas.size["height"] / 2),
    ).click().perform()
    wait_for(driver, lambda d: url_state(d).get("id") == str(pt[0]), f"a search from {pt}")
    wait_for(driver, lambda d: len(hits(d)) > 0, "its results")
    driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=info]").click()
    table = driver.find_element(By.ID, "info-table").text
    assert "files 18" in table and "fingerprint" in table
