"""The playground in a real browser (headless Chromium driven by selenium): type a prompt, watch the
text stream into the page, chat through the template; a screenshot goes to docs/images/playground.png.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped where they are missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

import decoderlm  # noqa: E402
from decoderlm.generate import complete  # noqa: E402
from serve_support import CHATML, chat_template_file, one_torch_thread, running_server, tiny_run_dir  # noqa: E402

# The docs' picture is refreshed only when asked (DECODERLM_DOCS_SCREENSHOT=1), so a test run leaves the
# checkout unchanged; otherwise the screenshot goes to pytest's temporary directory.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "playground.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")

# Records the generated text's length at every change, so the test sees it grow piece by piece.
WATCH = """
window.__lengths = [];
const target = document.getElementById(arguments[0]);
new MutationObserver(() => window.__lengths.push(target.textContent.length))
  .observe(target, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,720",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served():
    lm = decoderlm.load(tiny_run_dir())
    with one_torch_thread(), running_server(lm, chat_template=chat_template_file()) as (url, _):
        yield lm, url


def wait_for(driver, condition, seconds=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition(d))


def set_value(driver, element_id: str, value: str):
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input'));", element_id, value)


def test_prompt_mode_streams_text_into_the_page(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    lm, url = served
    browser.get(url + "/")
    wait_for(browser, lambda d: d.find_element(By.ID, "model-name").text == "tiny")
    assert browser.find_element(By.ID, "context-size").text == "128"
    set_value(browser, "temperature", "0")
    set_value(browser, "max-tokens", "28")
    browser.find_element(By.ID, "prompt").send_keys("the quick brown fox")
    browser.execute_script(WATCH, "output")
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, lambda d: "tokens/s" in d.find_element(By.ID, "status").text)
    expected = complete(lm, "the quick brown fox", max_new_tokens=28, temperature=0)[0].text
    assert browser.find_element(By.ID, "generated").get_attribute("textContent") == expected
    lengths = browser.execute_script("return window.__lengths")
    # The text grew piece by piece (several SSE events can arrive in one network read and render
    # together, so the page's own count of events, below, is the exact check).
    assert len(set(lengths)) >= 2 and lengths == sorted(lengths)
    assert int(browser.find_element(By.ID, "output").get_attribute("data-chunks")) > 5
    target = DOCS_SCREENSHOT if os.environ.get("DECODERLM_DOCS_SCREENSHOT") == "1" else tmp_path / "playground.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".png", delete=False) as tmp:
        assert browser.get_screenshot_as_file(tmp.name)
    os.replace(tmp.name, target)  # atomically: a reader never sees half a picture
    assert target.stat().st_size > 10_000  # a real rendered page, not an empty image


def test_chat_mode_uses_the_template(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    lm, url = served
    browser.get(url + "/")
    wait_for(browser, lambda d: d.find_element(By.ID, "model-name").text == "tiny")
    set_value(browser, "temperature", "0")
    set_value(browser, "max-tokens", "20")
    browser.find_element(By.ID, "mode-chat").click()
    browser.find_element(By.ID, "chat-input").send_keys("the quick", Keys.ENTER)
    wait_for(browser, lambda d: "tokens/s" in d.find_element(By.ID, "status").text)
    rendered = "<|im_start|>user\nthe quick<|im_end|>\n<|im_start|>assistant\n"
    assert CHATML in chat_template_file().read_text()
    reply = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].get_attribute("textContent")
    assert reply == complete(lm, rendered, max_new_tokens=20, temperature=0)[0].text and reply
