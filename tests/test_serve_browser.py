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
    (root / "photos" / "broken.jpg").write_bytes(b"not a photo at all")  # a failure to show
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
    assert "files 18" in table and "failed 1" in table and "fingerprint" in table
    failures = driver.find_element(By.ID, "failures").text
    assert "broken.jpg" in failures and "not a recognised image" in failures


def test_hovering_the_map_shows_the_photo(served, driver):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By

    url, _ = served
    driver.get(url + "?view=collection")
    wait_for(driver, lambda d: d.execute_script("return MAP && MAP.points.length") == 18, "map")
    canvas = driver.find_element(By.ID, "map")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    scale = canvas.size["width"] / int(canvas.get_attribute("width"))
    checked = 0
    for i in range(18):
        p = driver.execute_script(f"return MAP.points[{i}];")
        near = "return MAP.points.filter(q => Math.hypot(q.cx - arguments[0], q.cy - arguments[1]) < 3).length"  # noqa: E501
        if driver.execute_script(near, p["cx"], p["cy"]) > 1:
            continue  # another point where the mouse lands: either may be shown
        ActionChains(driver).move_to_element_with_offset(
            canvas,
            int(p["cx"] * scale - canvas.size["width"] / 2),
            int(p["cy"] * scale - canvas.size["height"] / 2),
        ).perform()
        want = f"{p['label']}/{p['name']}"
        wait_for(driver, lambda d, w=want: d.find_element(By.ID, "map-tip-name").text == w, want)
        assert driver.find_element(By.ID, "map-tip").is_displayed()
        src = driver.find_element(By.ID, "map-tip-img").get_attribute("src")
        assert src.endswith(f"/api/thumb/{p['id']}")
        checked += 1
        if checked == 2:
            break
    assert checked == 2, "no two points stand apart on the map"


def test_drop_and_paste_search_like_the_file_picker(served, driver, tmp_path):
    """A photo dropped on the page, or pasted, is searched as the file picker searches it
    (the events carry a File, as a browser's drag and drop and clipboard do)."""
    import base64

    url, _ = served
    make(tmp_path / "new", per_class=1, seed=31)
    photo = sorted((tmp_path / "new").rglob("*.jpg"))[1]
    want = upload(driver, url, photo, k=6)
    data = base64.b64encode(photo.read_bytes()).decode()
    for event in ("drop", "paste"):
        driver.get(f"{url}?id={want[0]}&k=6")
        wait_for(driver, lambda d: len(hits(d)) == 6 and hits(d) != want, "other results")
        driver.execute_script(
            """
            const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "q.jpg", { type: "image/jpeg" }));
            const ev = arguments[1] === "drop"
              ? new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true })
              : new ClipboardEvent("paste", { clipboardData: dt, bubbles: true });
            document.body.dispatchEvent(ev);
            """,
            data,
            event,
        )
        wait_for(driver, lambda d: hits(d) == want, f"the {event}ped photo's results")
        assert "id" not in url_state(driver)


def test_binary_codes_made_while_serving(served, driver):
    """`alexsearch codes` run while the server runs: the reloaded page offers Hamming
    search with its bytes an image, and searches with it (distances in bits)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, root = served
    alexsearch.build_codes(root / "ix", bits=32, epochs=1)
    driver.get(f"{url}?id=1&k=6")
    wait_for(driver, lambda d: d.find_element(By.ID, "mode-box").is_displayed(), "the mode box")
    label = driver.find_element(By.ID, "mode-binary").text
    assert "4 bytes an image" in label, label
    Select(driver.find_element(By.ID, "mode")).select_by_value("binary")
    wait_for(driver, lambda d: url_state(d).get("mode") == "binary", "mode=binary in the URL")

    def in_bits(d):
        shown = d.execute_script(  # in one go: the grid may be re-rendered meanwhile
            "return [...document.querySelectorAll('#results .hit .d')].map(e => e.textContent)"
        )
        return len(shown) == 6 and all(t.endswith(" bits") for t in shown)

    wait_for(driver, in_bits, "Hamming distances")


# -- duplicates and search by label (issue 16)


def _planted_checkpoint(photos, path):
    """The init checkpoint with fc8 planted as tests/test_labels.py plants it, so photo 000
    of each shape has its own class on top ("tabby" for red_circles)."""
    from test_labels import NAMES, plant_fc8

    from alexsearch.weights import checkpoint

    ckpt = checkpoint.init_checkpoint(len(NAMES), seed=1, classes=NAMES)
    plant_fc8(ckpt, path, photos)
    checkpoint.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def served_dups(tmp_path_factory):
    """Shapes (labelled by a planted fc8) and planted duplicates in one index."""
    from dup_photos import make_library

    root = tmp_path_factory.mktemp("browse-dups")
    make(root / "photos" / "shapes", per_class=2, seed=4)
    files = make_library(root / "photos" / "lib")
    planted = _planted_checkpoint(root / "photos" / "shapes", root / "planted.ckpt")
    ix = root / "ix"
    alexsearch.build_index(root / "photos", index=ix, weights=planted, device="cpu", workers=0)
    proc, url = start_server(ix, planted)
    yield url, ix, planted, files
    stop_server(proc)


def test_duplicates_tab_shows_the_planted_groups(served_dups, driver):
    from selenium.webdriver.common.by import By

    url, ix, planted, files = served_dups
    with alexsearch.open_index(ix, weights=planted) as opened:
        want = opened.duplicates("near").to_dict()
    near = [g for g in want["groups"] if g["tier"] == "near"]
    assert len(near) == 1 and len(near[0]["files"]) == 4  # the original and 3 copies
    driver.get(url)
    wait_for(driver, lambda d: d.find_element(By.ID, "summary").text, "the index summary")
    driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=duplicates]").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".dup-group"), "the groups")
    shown = driver.execute_script(
        """return [...document.querySelectorAll('.dup-group')].map(g => ({
             tier: g.dataset.tier, head: g.querySelector('.head').textContent,
             ids: [...g.querySelectorAll('.hit')].map(h => Number(h.dataset.id)),
             captions: [...g.querySelectorAll('.hit .d')].map(e => e.textContent)}))"""
    )
    assert [(g["tier"], g["ids"]) for g in shown] == [
        (g["tier"], [f["id"] for f in g["files"]]) for g in want["groups"]
    ]
    group = next(g for g in shown if g["tier"] == "near")
    assert "keep p00.jpg" in group["head"] and "4 photos" in group["head"]
    assert group["captions"][0].startswith("keep · near ")
    assert all(c.startswith("near 0.") for c in group["captions"][1:])
    status = driver.find_element(By.ID, "dup-status").text
    assert f"{len(want['groups'])} groups, {want['duplicates']} duplicates" in status
    # a photo of a group searches from it
    copy = group["ids"][1]
    driver.find_elements(By.CSS_SELECTOR, ".dup-group[data-tier=near] .hit")[1].click()
    wait_for(driver, lambda d: url_state(d).get("id") == str(copy), "a search from the copy")
    wait_for(driver, lambda d: len(hits(d)) > 0 and copy not in hits(d), "its neighbours")
    assert driver.find_element(By.ID, "view-search").is_displayed()


def test_a_class_name_shows_the_photos_of_that_class(served_dups, driver):
    from selenium.webdriver.common.by import By

    url, ix, planted, _ = served_dups
    with alexsearch.open_index(ix, weights=planted) as opened:
        want = opened.query_label("tabby", 12).to_dict()
    assert want["photos"] and any(p["path"].endswith("red_circles/000.jpg") for p in want["photos"])
    driver.get(url + "?k=12")
    wait_for(driver, lambda d: d.find_element(By.ID, "summary").text, "the index summary")
    box = driver.find_element(By.ID, "label-word")
    box.send_keys("tabby cat")
    box.submit()
    wait_for(driver, lambda d: hits(d) == [p["id"] for p in want["photos"]], "the tabbies")
    captions = driver.execute_script(
        "return [...document.querySelectorAll('#results .hit .d')].map(e => e.textContent)"
    )
    assert captions == [f"tabby {p['prob'] * 100:.1f}%" for p in want["photos"]]
    assert url_state(driver) == {"label": "tabby cat", "k": "12"}
    assert "tabby" in driver.find_element(By.ID, "label-head").text
    assert not driver.find_element(By.ID, "query").is_displayed()  # no query photo here
    # a word that names no class: the server's one line, shown as an error
    box = driver.find_element(By.ID, "label-word")
    box.clear()
    box.send_keys("tabbby")
    box.submit()
    status = driver.find_element(By.ID, "status")
    wait_for(driver, lambda d: "closest: tabby" in status.text, "the server's error")
    assert status.get_attribute("class") == "error" and "\n" not in status.text
    assert hits(driver) == []
    # Back: the tabbies again, from the URL
    driver.back()
    wait_for(driver, lambda d: hits(d) == [p["id"] for p in want["photos"]], "the tabbies again")


# -- several indexes served without merging (issue 17)


def test_a_page_over_two_indexes_shows_and_searches_hits_of_both(tmp_path, init_ckpt, driver):
    from selenium.webdriver.common.by import By

    photos = tmp_path / "photos"
    make(photos, per_class=3, seed=8)
    parts = [tmp_path / "s0", tmp_path / "s1"]
    for i, ix in enumerate(parts):
        alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cpu", workers=0,
                               shard=f"{i}/2")  # fmt: skip
    proc, url = start_server(parts, init_ckpt)
    try:
        shown = (
            "return [...document.querySelectorAll('#results .hit')]"
            ".map(e => [e.dataset.id, e.dataset.index, e.title])"
        )
        driver.get(url + "?k=12")
        wait_for(driver, lambda d: "in 2 indexes" in d.find_element(By.ID, "summary").text,
                 "the summary of both")  # fmt: skip
        driver.find_element(By.ID, "file").send_keys(str(sorted(photos.rglob("*.jpg"))[0]))
        wait_for(driver, lambda d: len(d.execute_script(shown)) == 12, "12 results")
        first = driver.execute_script(shown)
        assert {i for _, i, _ in first} == {str(p) for p in parts}  # hits of both indexes
        for ref, index, title in first:
            part = str(parts.index(next(p for p in parts if str(p) == index)))
            assert ref.split(":")[0] == part and f"from the index {index}" in title
        # a click on a hit of the second index searches from it, named by PART:ID
        rank = next(r for r, (ref, _, _) in enumerate(first) if ref.startswith("1:"))
        chosen = first[rank][0]
        driver.find_elements(By.CSS_SELECTOR, "#results .hit")[rank].click()

        def moved(d):
            now = [ref for ref, _, _ in d.execute_script(shown)]
            q = d.find_element(By.ID, "query").get_attribute("data-id")
            return q == chosen and len(now) == 12 and chosen not in now

        wait_for(driver, moved, f"the neighbours of {chosen}")
        assert url_state(driver) == {"id": chosen, "k": "12"}
        img = driver.find_element(By.ID, "query-img")
        wait_for(driver, lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0,
                 "the query photo from its index")  # fmt: skip
        driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=info]").click()
        table = driver.find_element(By.ID, "info-table").text
        assert "files 18" in table and f"index 1 {parts[1]}" in table
    finally:
        stop_server(proc)


# -- a live re-index, the tier and min_prob in the URL


def test_a_reindex_while_the_page_is_open_refreshes_what_it_shows(tmp_path, init_ckpt, driver):
    """`alexsearch index` publishes while the page is open: the page notices the new
    generation (its tab shown again, or any answer of the index) and refreshes the summary,
    the open t-SNE map and the open Duplicates list, without a reload."""
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    photos = tmp_path / "photos"
    make(photos, per_class=1, seed=5)
    ix = tmp_path / "ix"

    def reindex():
        alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cpu", workers=0)

    def shows(element, *texts):
        return lambda d: all(t in d.find_element(By.ID, element).text for t in texts)

    def tab_shown_again():
        driver.execute_script("document.dispatchEvent(new Event('visibilitychange'))")

    reindex()
    proc, url = start_server(ix, init_ckpt)
    try:
        driver.get(url + "?view=collection")
        wait_for(driver, shows("summary", "6 photos", "generation 1"), "the summary")
        wait_for(driver, shows("map-status", "6 photos", "generation 1"), "the map")
        driver.execute_script("window.notReloaded = true")
        # more photos while the page is open; its tab is shown again
        make(tmp_path / "more", per_class=1, seed=7)
        shutil.copytree(tmp_path / "more", photos / "more")
        reindex()
        assert "6 photos" in driver.find_element(By.ID, "summary").text  # not polled
        tab_shown_again()
        wait_for(driver, shows("summary", "12 photos", "generation 2"), "the new summary")
        wait_for(driver, shows("map-status", "12 photos", "generation 2"), "the new map")
        # the Duplicates list open (exact copies): a copy indexed meanwhile shows up
        driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=duplicates]").click()
        Select(driver.find_element(By.ID, "dup-tier")).select_by_value("exact")
        wait_for(driver, shows("dup-status", "0 groups", "among 12 photos"), "no duplicates")
        first = sorted(photos.rglob("*.jpg"))[0]
        shutil.copyfile(first, photos / "more" / "a copy.jpg")
        reindex()
        tab_shown_again()
        wait_for(driver, shows("dup-status", "1 groups", "among 13 photos"), "the copy")
        wait_for(driver, shows("summary", "13 photos", "generation 3"), "the summary")
        # a search answered from a newer generation refreshes the summary as well
        driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=search]").click()
        make(tmp_path / "most", per_class=1, seed=9)
        shutil.copytree(tmp_path / "most", photos / "most")
        reindex()
        driver.find_element(By.ID, "file").send_keys(str(first))
        wait_for(driver, lambda d: len(hits(d)) == 12, "the upload's results")
        wait_for(driver, shows("summary", "19 photos", "generation 4"), "the summary again")
        driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=info]").click()
        assert "files 19" in driver.find_element(By.ID, "info-table").text
        assert driver.execute_script("return window.notReloaded") is True
    finally:
        stop_server(proc)


def test_the_duplicates_tier_is_kept_in_the_url(served_dups, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, ix, planted, _ = served_dups
    with alexsearch.open_index(ix, weights=planted) as opened:
        want = {
            t: [[f["id"] for f in g["files"]] for g in opened.duplicates(t).to_dict()["groups"]]
            for t in ("exact", "near", "similar")
        }
    assert want["exact"] != want["near"]

    def groups(d):
        return d.execute_script(
            "return [...document.querySelectorAll('.dup-group')].map(g =>"
            " [...g.querySelectorAll('.hit')].map(h => Number(h.dataset.id)))"
        )

    def showing(tier):
        def check(d):
            picked = d.find_element(By.ID, "dup-tier").get_attribute("value") == tier
            return picked and groups(d) == want[tier] and "groups" in d.find_element(
                By.ID, "dup-status").text  # fmt: skip

        return check

    driver.get(url)
    wait_for(driver, lambda d: d.find_element(By.ID, "summary").text, "the index summary")
    driver.find_element(By.CSS_SELECTOR, "#tabs button[data-view=duplicates]").click()
    wait_for(driver, showing("near"), "the near groups")
    Select(driver.find_element(By.ID, "dup-tier")).select_by_value("exact")
    wait_for(driver, showing("exact"), "the exact groups")
    assert url_state(driver) == {"view": "duplicates", "tier": "exact", "k": "12"}
    Select(driver.find_element(By.ID, "dup-tier")).select_by_value("similar")
    wait_for(driver, showing("similar"), "the similar groups")
    driver.back()
    wait_for(driver, showing("exact"), "exact again after Back")
    assert url_state(driver)["tier"] == "exact"
    driver.forward()
    wait_for(driver, showing("similar"), "similar again after Forward")
    driver.refresh()
    wait_for(driver, showing("similar"), "similar after a reload")
    driver.get(url + "?view=duplicates&tier=exact")  # a shared link
    wait_for(driver, showing("exact"), "exact from the URL alone")
    assert driver.find_element(By.ID, "view-duplicates").is_displayed()
    # a tier the server does not know: its one line
    driver.get(url + "?view=duplicates&tier=nearr")
    wait_for(driver, lambda d: "tier must be one of" in d.find_element(By.ID, "dup-status").text,
             "the server's line")  # fmt: skip


def test_min_prob_narrows_the_photos_of_a_class_as_the_api_does(served_dups, driver):
    import json
    from urllib.parse import urlencode
    from urllib.request import urlopen

    from selenium.webdriver.common.by import By

    url, _, _, _ = served_dups

    def api_label(**q):
        with urlopen(f"{url}api/label?{urlencode({'word': 'tabby', 'k': 12, **q})}") as r:
            return [p["id"] for p in json.load(r)["photos"]]

    with urlopen(f"{url}api/label?word=tabby&k=12") as r:
        probs = sorted(p["prob"] for p in json.load(r)["photos"])
    assert probs[0] < probs[-1], probs
    high = f"{(probs[0] + probs[-1]) / 2:.4f}"
    every, narrowed = api_label(), api_label(min_prob=high)
    assert 0 < len(narrowed) < len(every)
    driver.get(url + "?k=12")
    wait_for(driver, lambda d: d.find_element(By.ID, "summary").text, "the index summary")
    driver.find_element(By.ID, "label-word").send_keys("tabby")
    driver.find_element(By.ID, "label-form").submit()
    wait_for(driver, lambda d: hits(d) == every, "every tabby")
    driver.find_element(By.ID, "label-min-prob").send_keys(high)
    driver.find_element(By.ID, "label-form").submit()
    wait_for(driver, lambda d: hits(d) == narrowed, f"the tabbies at {high} or more")
    assert url_state(driver) == {"label": "tabby", "min_prob": high, "k": "12"}
    assert f"probability {high} or more" in driver.find_element(By.ID, "status").text
    driver.back()
    wait_for(driver, lambda d: hits(d) == every, "every tabby after Back")
    driver.get(f"{url}?label=tabby&min_prob={high}&k=12")  # a shared link
    wait_for(driver, lambda d: hits(d) == narrowed, "the narrowed tabbies from the URL")
    box = driver.find_element(By.ID, "label-min-prob")
    assert box.get_attribute("value") == high
    # out of range: the server's one line
    box.clear()
    box.send_keys("2")
    driver.find_element(By.ID, "label-form").submit()
    status = driver.find_element(By.ID, "status")
    wait_for(driver, lambda d: "min_prob must be between 0 and 1" in status.text, "the error")
    assert status.get_attribute("class") == "error" and hits(driver) == []
