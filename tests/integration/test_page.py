"""The status page in a real browser: Debian's headless Chromium, driven by selenium.

scripts/test installs chromium and chromium-driver (scripts/browser.sh); nothing is
downloaded at test time. The daemons run real llama-server children with the Gemma model,
or the fake child where a test is about the page rather than the model.
"""

from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests import load
from tests.fakes import tiny_gguf
from tests.integration.test_load import MODELS, _bounded
from tests.integration.test_progress import slow_model
from tests.integration.test_real_gemma import gemma_config
from tests.integration.test_wheel import installed  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "status-page.png"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Chromium and ChromeDriver are missing: ./scripts/test installs them "
                    "(Debian packages chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--force-color-profile=srgb"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def errors(chrome: webdriver.Chrome) -> list[str]:
    """What the page logged as errors since the last call."""
    return [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]


def wait(chrome: webdriver.Chrome, what: str, predicate, timeout: float = 60):
    return WebDriverWait(chrome, timeout, poll_frequency=0.1).until(
        lambda c: predicate(c), message=what)


def card(chrome: webdriver.Chrome, model: str):
    return chrome.find_element(By.CSS_SELECTOR, f'article[data-model="{model}"]')


def badge(chrome: webdriver.Chrome, model: str) -> str:
    return card(chrome, model).find_element(By.CLASS_NAME, "badge").text


def button(chrome: webdriver.Chrome, model: str, label: str):
    return card(chrome, model).find_element(By.XPATH, f'.//button[normalize-space()="{label}"]')


def models_bar(chrome: webdriver.Chrome) -> float:
    """How much of the host's bar the models' segment takes, in percent."""
    seg = chrome.find_element(By.CSS_SELECTOR, '.bar[data-device="host"] .seg-models')
    return float(seg.value_of_css_property("width").removesuffix("px")) / float(
        chrome.find_element(By.CSS_SELECTOR, '.bar[data-device="host"]').size["width"]) * 100


@pytest.mark.real
def test_the_page_shows_models_live_and_loads_and_unloads_them(daemon, llama_server, gemma,
                                                               browser, tmp_path):
    # Gemma 3 keeps its prompt cache only when its own table asks (a sliding window).
    kept = {"gemma": {"path": "gemma.gguf", "keep_prompt_cache": True}}
    d = daemon(gemma_config(llama_server, models=kept),
               models={"gemma.gguf": gemma, "junk.gguf": b"not a model at all"})
    browser.get(d.url + "/")
    wait(browser, "the model list", lambda c: badge(c, "gemma") == "unloaded")
    assert badge(browser, "junk") == "unloaded"
    assert "none" in card(browser, "gemma").text  # TTL left: none configured
    before = models_bar(browser)

    button(browser, "gemma", "Load").click()
    wait(browser, "gemma loaded, live", lambda c: badge(c, "gemma") == "loaded")
    text = card(browser, "gemma").text
    assert "0 in flight" in text and "pid / port" in text and "host: est" in text
    wait(browser, "the memory bar to grow", lambda c: models_bar(c) > before + 0.5)
    browser.save_screenshot(str(tmp_path / "status-page.png"))
    if os.environ.get("LLMD_UPDATE_SCREENSHOT"):  # the README's picture, made here
        browser.save_screenshot(str(SCREENSHOT))

    prompt = " ".join(f"line {i}: the quick brown fox." for i in range(40))  # ~400 tokens
    assert d.chat("gemma", prompt, max_tokens=2).status_code == 200
    button(browser, "gemma", "Unload").click()
    wait(browser, "gemma unloaded", lambda c: badge(c, "gemma") == "unloaded")
    wait(browser, "the memory bar to shrink", lambda c: models_bar(c) < before + 0.5)
    wait(browser, "its prompts shown as kept",
         lambda c: "tokens in 1 slot" in card(c, "gemma").text)

    button(browser, "junk", "Load").click()
    wait(browser, "junk's failure", lambda c: badge(c, "junk") == "failed")
    failure = card(browser, "junk").find_element(By.CLASS_NAME, "failure").text
    assert "Failed: llama-server exited with code" in failure and "exit code" in failure

    button(browser, "junk", "Log").click()
    wait(browser, "junk's log", lambda c: "llama" in c.find_element(By.ID, "log").text)
    events = browser.find_element(By.ID, "events").text
    assert "gemma · status_change: loaded" in events and " ago" in events
    assert errors(browser) == []


def test_keyboard_phone_width_and_dark_mode(daemon, fake_server, browser):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": json.dumps({})})
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.get(d.url + "/ui")
    wait(browser, "the model list", lambda c: badge(c, "a") == "unloaded")
    background = browser.execute_script(
        "return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"  # the dark palette
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    # Keyboard only: tab to the Load button and press Enter.
    body = browser.find_element(By.TAG_NAME, "body")
    for _ in range(20):
        body.send_keys(Keys.TAB) if browser.switch_to.active_element == body else \
            browser.switch_to.active_element.send_keys(Keys.TAB)
        if browser.switch_to.active_element == button(browser, "a", "Load"):
            break
    assert browser.switch_to.active_element == button(browser, "a", "Load")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser, "a loaded", lambda c: badge(c, "a") == "loaded")
    # Force unload asks first; dismissed, nothing happens.
    button(browser, "a", "Force unload").click()
    browser.switch_to.alert.dismiss()
    assert d.models()["a"]["status"]["value"] == "loaded"
    button(browser, "a", "Force unload").click()
    browser.switch_to.alert.accept()
    wait(browser, "a unloaded", lambda c: badge(c, "a") == "unloaded")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    last_used = card(browser, "a").find_element(By.XPATH, './/dt[.="last used"]/following-sibling::dd[1]')
    assert last_used.text.endswith(" ago") and last_used.get_attribute("title")
    assert errors(browser) == []


def test_with_api_keys_the_page_asks_once_and_keeps_the_key_for_the_tab(daemon, fake_server,
                                                                         browser):
    d = daemon({"llama_server": fake_server, "api_keys": ["sesame"]},
               models={"a.gguf": json.dumps({})})
    browser.get(d.url + "/")
    wait(browser, "the key prompt", lambda c: c.find_element(By.ID, "login").is_displayed())
    assert not browser.find_element(By.ID, "app").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "article[data-model]") == []
    key = browser.find_element(By.ID, "key")
    key.send_keys("wrong", Keys.ENTER)
    wait(browser, "a clear 401", lambda c: "refused (401)" in c.find_element(
        By.ID, "login-error").text)
    browser.find_element(By.ID, "key").send_keys("sesame", Keys.ENTER)
    wait(browser, "the model list", lambda c: badge(c, "a") == "unloaded")
    button(browser, "a", "Load").click()  # through the key, like any client
    wait(browser, "a loaded", lambda c: badge(c, "a") == "loaded")
    assert "sesame" not in browser.current_url
    assert browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.length") == 1
    assert browser.execute_script("return localStorage.length") == 0
    browser.refresh()  # the same tab keeps it
    wait(browser, "the model list again", lambda c: badge(c, "a") == "loaded")
    # The only errors: the refused key's 401.
    assert all("401" in e for e in errors(browser))


@pytest.mark.slow
def test_the_page_is_served_by_llmd_installed_from_its_wheel(daemon, fake_server, browser,
                                                             installed):  # noqa: F811
    d = daemon({"llama_server": fake_server}, models={"a.gguf": json.dumps({})},
               python=str(installed.venv / "bin" / "python"), env=installed.env)
    browser.get(d.url + "/")
    wait(browser, "the model list", lambda c: badge(c, "a") == "unloaded")
    button(browser, "a", "Load").click()
    wait(browser, "a loaded", lambda c: badge(c, "a") == "loaded")
    assert errors(browser) == []


@pytest.mark.real
def test_the_page_keeps_up_with_200_clients_swapping_models(daemon, llama_server, browser,
                                                           tmp_path):
    files = {f"{m}.gguf": tiny_gguf.write(tmp_path / f"{m}.gguf", layers=2, width=128, seed=i)
             for i, m in enumerate(MODELS)}
    d = daemon({"llama_server": llama_server, "models_max": 2, "drain_timeout": 30,
                "args": ["--ctx-size", "2048", "--threads", "2", "--parallel", "8"]},
               models=files)
    browser.get(d.url + "/")
    wait(browser, "the model list", lambda c: badge(c, "blue") == "unloaded")
    tally = trio.run(lambda: _bounded(d.url, d.proc.pid))
    assert tally.problems == [], tally.problems[:10]
    # The page caught up with every change, over its one event stream, and is still live.
    truth = {m: d.models()[m]["state"] for m in MODELS}
    wait(browser, f"the page to show {truth}",
         lambda c: {m: badge(c, m) for m in MODELS} == truth, 10)
    assert browser.find_element(By.ID, "summary").text.endswith("live")
    loads = sum(1 for line in d.http.get("/metrics").text.splitlines()
                if line.startswith("llmd_loads_total"))
    assert loads and "status_change: loaded" in browser.find_element(By.ID, "events").text
    assert errors(browser) == []


def test_the_pages_files_need_no_key_but_its_data_does(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "api_keys": ["sesame"]},
               models={"a.gguf": json.dumps({})})
    for path, kind in (("/", "text/html"), ("/ui", "text/html"), ("/ui/app.js", "text/javascript"),
                       ("/ui/style.css", "text/css")):
        response = d.http.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "a.gguf" not in response.text and "sesame" not in response.text
    assert d.http.get("/llmd/page").json() == {"key_required": True}
    for path in ("/llmd/status", "/llmd/logs?model=a", "/models/sse"):
        assert d.http.get(path).status_code == 401
    status = d.http.get("/llmd/status", headers={"authorization": "Bearer sesame"}).json()
    assert [m["id"] for m in status["models"]] == ["a"] and status["requests_total"] == 0


def test_unload_with_force_cancels_requests_in_flight(daemon, fake_server):
    d = daemon({"llama_server": fake_server},
               models={"s.gguf": json.dumps({"tokens": 1000, "token_delay": 0.05})})
    with d.http.stream("POST", "/v1/chat/completions",
                       json={"model": "s", "stream": True}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert d.http.post("/models/unload", json={"model": "s", "force": True}).json() == {
            "success": True}
        rest = [line for line in lines if line.startswith("data: ")]
    assert "was unloaded" in json.loads(rest[-1][6:])["error"]["message"]


def test_a_load_in_progress_shows_its_percentage_and_step(daemon, fake_server, browser):
    d = daemon({"llama_server": fake_server}, models={"slow.gguf": slow_model(40, 3)})
    browser.get(d.url + "/")
    wait(browser, "the model list", lambda c: badge(c, "slow") == "unloaded")
    button(browser, "slow", "Load").click()
    wait(browser, "a percentage", lambda c: re.fullmatch(r"loading [1-9]\d? %", badge(c, "slow")))
    step = wait(browser, "what the load does", lambda c: re.fullmatch(
        r"read in \d+ MiB of 40 MiB", card(c, "slow").find_element(By.CLASS_NAME, "step").text))
    assert step
    assert card(browser, "slow").find_element(By.TAG_NAME, "progress").is_displayed()
    wait(browser, "loaded", lambda c: badge(c, "slow") == "loaded")
    assert not card(browser, "slow").find_element(By.TAG_NAME, "progress").is_displayed()
    assert errors(browser) == []
