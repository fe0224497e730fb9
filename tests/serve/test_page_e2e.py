"""The evaluation page end to end in real headless Chromium (Debian's chromium + chromedriver),
against the Ray Serve app: two checkpoints side by side, then a HumanEval task run in the sandbox."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests

from .conftest import latest_step, make_checkpoint

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium/chromium-driver not installed (scripts/system-deps installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_until(driver, condition, timeout=90, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), message=f"waiting for {what}")


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).get_property("textContent")


def select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def test_page_compares_two_checkpoints_and_runs_a_task(serve_app, browser):
    url, run_dir = serve_app.url, serve_app.run_dir
    # Two checkpoints loaded side by side: the newest (current) and the one before it.
    if latest_step(run_dir) < 2:
        make_checkpoint(run_dir, latest_step(run_dir) + 1)
    newest, older = f"checkpoint_{latest_step(run_dir):08d}", "checkpoint_00000001"
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/api/status").json()["current"] != newest:
        assert time.monotonic() < deadline, f"{newest} was not served in time"
        time.sleep(0.2)

    browser.get(url + "/")
    wait_until(browser, lambda d: d.find_element("id", "server-status").get_attribute("data-ready") == "1",
               what="the checkpoint list")
    options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#model-b option")]
    assert {newest, older} <= set(options)

    # Side by side, streamed: each panel shows what the API gives for the same request.
    select(browser, "model-a", newest)
    select(browser, "model-b", older)
    select(browser, "mode", "completion")
    for field, value in (("max-tokens", "12"), ("temperature", "0")):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(value)
    browser.find_element("id", "prompt").send_keys("def fibonacci(n):")
    browser.find_element("id", "generate").click()
    wait_until(browser, lambda d: text(d, "state-a").startswith("done") and text(d, "state-b").startswith("done"),
               what="both completions")
    assert text(browser, "name-a") == newest and text(browser, "name-b") == older
    for side, model in (("a", newest), ("b", older)):
        expected = requests.post(f"{url}/v1/completions", json={
            "model": model, "prompt": "def fibonacci(n):", "max_tokens": 12, "temperature": 0}).json()
        assert text(browser, f"out-{side}") == expected["choices"][0]["text"] != ""
    assert text(browser, "out-a") != text(browser, "out-b")

    # A HumanEval task: generate with both, run the tests in the eval sandbox, show the verdicts.
    wait_until(browser, lambda d: len(d.find_elements("css selector", "#task option")) >= 164, what="HumanEval tasks")
    select(browser, "task", "HumanEval/0")
    wait_until(browser, lambda d: "has_close_elements" in text(d, "task-prompt"), what="the task prompt")
    browser.find_element("id", "run-task").click()
    wait_until(browser, lambda d: text(d, "verdict-a") in ("PASS", "FAIL") and text(d, "verdict-b") in ("PASS", "FAIL"),
               what="both verdicts")
    # Tiny random models write no working code: a failed verdict with the test output shown.
    for side in ("a", "b"):
        assert text(browser, f"verdict-{side}") == "FAIL"
        assert "fail" in text(browser, f"test-output-{side}").lower()
        assert browser.find_element("id", f"completion-{side}").get_property("value") != ""

    # Edit the answer into the canonical solution and test again: the sandbox passes it.
    from raywiz.benchmarks import load_tasks

    solution = next(t.solution for t in load_tasks("humaneval", serve_app.job.serve.benchmarks["humaneval"])
                    if t.task_id == "HumanEval/0")
    browser.execute_script("document.getElementById('completion-a').value = arguments[0];", solution)
    browser.find_element("id", "test-a").click()
    wait_until(browser, lambda d: text(d, "verdict-a") in ("PASS", "FAIL", "error"), what="the new verdict")
    assert text(browser, "verdict-a") == "PASS", text(browser, "test-output-a")
    assert "pass" in browser.find_element("id", "verdict-a").get_attribute("class")
