"""The web page in a real browser (headless Chromium driven by Playwright): chat streams its reply, translate
draws the attention heatmap, search ranks sentences; a screenshot of each tab is saved under the test's tmp dir."""

import shutil

import pytest

from .conftest import SlowModel, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium; "
                                                         ".ci/run installs it when it runs as root)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a test dependency) is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, errors  # no script error on the page


def test_chat_translate_and_search_in_a_browser(page, models, tmp_path):
    slow = SlowModel(models["tiny-chat"], delay=0.02)  # slow enough to see the reply arrive piece by piece
    server = start_server({**models, "tiny-chat": slow})
    try:
        page.goto(server.url)
        page.wait_for_selector("#tab-chat[aria-selected=true]")

        page.fill("#chat-input", "to be or not")
        page.click("#chat-send")
        # streamed: part of the reply is on the page while it is still coming
        page.wait_for_function("() => { const m = document.querySelector('.message.assistant.streaming');"
                               " return m && m.textContent.length > 0; }")
        assert page.is_enabled("#chat-stop")
        page.wait_for_selector(".message.assistant:not(.streaming)", timeout=30000)
        assert page.text_content(".message.user") == "to be or not"
        assert len(page.text_content(".message.assistant")) > 0
        page.screenshot(path=str(tmp_path / "chat.png"))

        page.click("#tab-translate")
        page.click("#translate-go")
        page.wait_for_selector("#attention-map[data-cells]", timeout=30000)
        assert page.text_content("#translate-output li .translation") is not None
        coloured = page.evaluate("""() => {
            const c = document.getElementById('attention-map');
            const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 2] > pixels[i + 1] + 20) n++;  // purple-blue
            return n;
        }""")
        assert coloured > 100
        page.select_option("#attention-head", "1")  # one head instead of their mean: redrawn without an error
        page.screenshot(path=str(tmp_path / "translate.png"))

        page.click("#tab-search")
        page.click("#search-go")
        page.wait_for_selector("#search-results li", timeout=30000)
        scores = [float(s) for s in page.locator("#search-results .score").all_text_contents()]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
        page.screenshot(path=str(tmp_path / "search.png"))
    finally:
        server.stop()
    for name in ("chat", "translate", "search"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_tabs_without_a_model_are_disabled_with_the_command_that_loads_one(page, models, tmp_path):
    server = start_server({"tiny-bert": models["tiny-bert"]})
    try:
        page.goto(server.url)
        page.wait_for_selector("#tab-search[aria-selected=true]")
        assert page.is_disabled("#tab-chat") and page.is_disabled("#tab-translate")
        hints = page.text_content("#hints")
        assert "transformerkit serve smollm2" in hints and "transformerkit serve runs/de-en" in hints
        page.screenshot(path=str(tmp_path / "search-only.png"))
    finally:
        server.stop()
