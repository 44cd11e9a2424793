"""`actdb serve` in a real browser: headless Chromium (Debian's chromium and chromium-driver,
installed by tests/run.sh) driven by Selenium, against the `actdb serve` command on a free
loopback port. Each page is saved as a screenshot under .screenshots/ (git-ignored)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from actdb.serve.app import store_names
from serve_stores import HOSTILE, corpus_texts

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / ".screenshots"
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1300,1000"]


@pytest.fixture(scope="module")
def server(known_store, hostile_store, probe_store):
    """`actdb serve` over the three test stores on a free port, as a user starts it."""
    stores = [known_store, hostile_store, probe_store]
    cmd = [sys.executable, "-m", "actdb.cli", "serve", *(str(s.path) for s in stores), "--port", "0", "--probe",
           "--contexts", "4", "--page-size", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert m, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        names = dict(zip(("known", "hostile", "probe"), store_names(stores)))
        yield m.group(1), names
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail(f"{CHROMIUM} or {DRIVER} is missing: run `bash tests/run.sh`, which installs Debian's "
                    "chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(flag)
    downloads = tmp_path_factory.mktemp("downloads")
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    SHOTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def visit(driver, url: str, shot: str | None = None):
    driver.get(url)
    wait_for(driver, lambda: driver.execute_script("return document.readyState") == "complete")
    if shot:
        save(driver, shot)


def save(driver, shot: str) -> None:
    """The whole page (the window grown to its height, at most 4,000 px)."""
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1300, min(int(h) + 140, 4000))
    driver.save_screenshot(str(SHOTS / f"{shot}.png"))
    driver.set_window_size(1300, 1000)


def wait_for(driver, cond, seconds: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda _: cond())


def no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def css(driver, sel: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, sel)


def fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def test_planted_detector_page_highlights_its_trigger(server, browser):
    base, n = server
    visit(browser, f"{base}/s/{n['known']}/neuron/0/1", "neuron-detector")
    assert css(browser, "#neuron-id")[0].text == "0:1"
    assert "token detector of w5" in css(browser, "#detector")[0].text
    fires = css(browser, "#contexts .tok.fire")
    centers = css(browser, "#contexts .tok.center")
    assert len(centers) == 4 and fires and all(t.text == "w5" for t in fires)
    assert css(browser, "#contexts-kind")[0].text == "most telling"
    css(browser, "#contexts-next")[0].click()                 # page the contexts
    wait_for(browser, lambda: "page=2" in browser.current_url)
    assert css(browser, "#contexts-kind")[0].text == "random sample"
    assert all(t.text == "w5" for t in css(browser, "#contexts .tok.fire"))
    save(browser, "neuron-contexts-page2")
    css(browser, "#contexts .where")[0].click()               # a context's document, the fire highlighted
    wait_for(browser, lambda: "/doc/" in browser.current_url)
    assert css(browser, "#doc .tok.fire") and all(t.text == "w5" for t in css(browser, "#doc .tok.fire"))
    save(browser, "document")
    no_console_errors(browser)


def test_layer_table_sorts_and_filters(server, browser):
    base, n = server
    visit(browser, f"{base}/s/{n['known']}/layer/0", "layer")

    def freqs():
        return [float(td.get_attribute("data-v")) for td in css(browser, "#neurons td.freq")]

    css(browser, 'a.sort[data-col="freq"]')[0].click()
    wait_for(browser, lambda: "sort=freq" in browser.current_url)
    up = freqs()
    assert len(up) == 8 and up == sorted(up) and up[0] == 0.0     # the dead neuron first
    css(browser, 'a.sort[data-col="freq"]')[0].click()
    wait_for(browser, lambda: "desc=1" in browser.current_url)
    down = freqs()
    assert down == sorted(down, reverse=True) and down[0] > up[-1]
    save(browser, "layer-sorted")
    from selenium.webdriver.support.ui import Select

    Select(css(browser, 'select[name="detector"]')[0]).select_by_value("token")
    css(browser, "#apply")[0].click()
    wait_for(browser, lambda: "detector=token" in browser.current_url)
    shown = [int(tr.get_attribute("data-neuron")) for tr in css(browser, "#neurons tbody tr")]
    want = fetch_json(f"{base}/api/s/{n['known']}/layer/0?detector=token&sort=freq&desc=1")
    assert shown == [r["neuron"] for r in want["rows"]] and 1 in shown
    save(browser, "layer-filtered")
    no_console_errors(browser)


def test_console_runs_a_query_and_downloads_csv(server, browser):
    base, n = server
    visit(browser, f"{base}/s/{n['known']}/sql")
    box = css(browser, "#sql")[0]
    box.clear()
    box.send_keys("SELECT layer, count(*) AS n, sum(fires) AS fires FROM neurons GROUP BY layer ORDER BY layer")
    css(browser, "#run")[0].click()
    wait_for(browser, lambda: css(browser, "#result"))
    rows = [[td.text for td in tr.find_elements("css selector", "td")] for tr in css(browser, "#result tbody tr")]
    assert [r[:2] for r in rows] == [["0", "16"], ["1", "16"], ["2", "16"]]
    save(browser, "console")
    css(browser, "#csv")[0].click()
    wait_for(browser, lambda: [p for p in browser.downloads.glob("*.csv")])
    (f,) = browser.downloads.glob("*.csv")
    wait_for(browser, lambda: f.read_text().count("\n") == 4)
    assert f.read_text().splitlines()[0] == "layer,n,fires"
    assert [l.split(",")[:2] for l in f.read_text().splitlines()[1:]] == [r[:2] for r in rows]
    visit(browser, f"{base}/s/{n['known']}/sql?saved=token_detectors_per_layer", "console-saved")
    assert css(browser, 'input[name^="p."]') and css(browser, "#result tbody tr")
    no_console_errors(browser)


def test_probe_on_a_tiny_model(server, browser, probe_store):
    base, n = server
    p = n["probe"]
    text = corpus_texts(probe_store.corpus)[2]
    layer = probe_store.manifest.layers[1]
    visit(browser, f"{base}/s/{p}/neuron/{layer}/3")
    css(browser, "form.probe-form textarea")[0].send_keys(text)
    css(browser, "form.probe-form button")[0].click()
    wait_for(browser, lambda: css(browser, ".probe-out .probe-tokens"), seconds=120)   # the model loads lazily
    want = fetch_json(f"{base}/api/s/{p}/probe?" + urllib.parse.urlencode({"text": text, "layer": layer,
                                                                            "neuron": 3}))
    toks = css(browser, ".probe-out .tok")
    assert [t.text for t in toks] == [t["text"] for t in want["tokens"]]
    assert ["fire" in t.get_attribute("class") for t in toks] == [t["fired"] for t in want["tokens"]]
    save(browser, "probe-neuron")
    visit(browser, f"{base}/s/{p}/token?q=the")                # each neuron of a layer
    css(browser, "form.probe-form textarea")[0].send_keys(text)
    css(browser, "form.probe-form button")[0].click()
    wait_for(browser, lambda: css(browser, ".probe-out .probe-tokens"), seconds=60)
    assert len(css(browser, ".probe-out sup")) == len(want["tokens"])
    save(browser, "probe-layer")
    no_console_errors(browser)


def test_injected_script_does_not_run(server, browser):
    from selenium.common.exceptions import NoAlertPresentException

    base, n = server
    h = n["hostile"]
    for url, shot in [(f"{base}/s/{h}/token?" + urllib.parse.urlencode({"q": HOSTILE}), "hostile-token"),
                      (f"{base}/s/{h}/neuron/0/1", "hostile-neuron"),
                      (f"{base}/s/{h}/sql?" + urllib.parse.urlencode({"q": f"SELECT '{HOSTILE}' AS x"}), None)]:
        visit(browser, url, shot)
        time.sleep(0.3)
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        assert HOSTILE in browser.find_element("tag name", "main").text   # shown as text
    no_console_errors(browser)


def test_stores_page_shows_figures(server, browser):
    base, n = server
    visit(browser, f"{base}/s/{n['known']}")
    imgs = css(browser, ".figures img")
    assert imgs
    for img in imgs:
        browser.execute_script("arguments[0].scrollIntoView()", img)
    wait_for(browser, lambda: all(browser.execute_script("return arguments[0].complete && "
                                                         "arguments[0].naturalWidth > 0", i) for i in imgs),
             seconds=180)
    browser.execute_script("window.scrollTo(0, 0)")
    save(browser, "store")
    no_console_errors(browser)
