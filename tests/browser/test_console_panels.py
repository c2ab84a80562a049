"""Embeddings, models and metrics panels, the API-key prompt, keyboard, themes and a
phone-width window, in a real browser against the real server."""

from __future__ import annotations

import re

import httpx

from tests.browser.conftest import API_KEY, DESKTOP, PHONE, screenshot, text_of, wait_until
from tests.browser.test_console_chat import open_console

EMBEDDING_MODEL = "all-minilm-l6-v2"
BADGE = text_of(f"tr[data-model='{EMBEDDING_MODEL}'] .badge")
MODELS_LISTED = "document.querySelector('#chat-model').options.length > 0"


def test_embeddings_heat_map_shows_the_similarity_matrix(page, server):
    open_console(page, server, "embeddings")
    assert page.is_visible("#panel-embeddings") and not page.is_visible("#panel-chat")
    wait_until(page, "document.querySelector('#embed-model').options.length > 0")
    assert page.input_value("#embed-model") == EMBEDDING_MODEL
    page.click("#embed-run")
    page.wait_for_selector(".heatmap-svg")
    cells = page.locator(".heatmap-svg .cell")
    assert cells.count() == 16
    matrix = [[0.0] * 4 for _ in range(4)]
    for i in range(16):
        cell = cells.nth(i)
        row, col = int(cell.get_attribute("data-row")), int(cell.get_attribute("data-col"))
        matrix[row][col] = float(cell.get_attribute("data-value"))
    for i in range(4):
        assert abs(matrix[i][i] - 1) < 1e-3
        for j in range(4):
            assert abs(matrix[i][j] - matrix[j][i]) < 1e-3
    # the example: two sentences about a cat, two about markets
    assert matrix[0][1] > matrix[0][2] + 0.2
    assert matrix[2][3] > matrix[1][3] + 0.2
    assert "request req-" in page.inner_text("#embed-info")
    screenshot(page, "embeddings")


def _state(server, model: str) -> str:
    return httpx.get(f"{server.base_url}/v1/models/{model}", timeout=10).json()["metadata"][
        "state"]


def test_models_panel_unloads_and_loads_a_model(page, server):
    open_console(page, server, "models")
    row = page.locator(f"tr[data-model='{EMBEDDING_MODEL}']")
    row.wait_for()
    badge = row.locator(".badge")
    assert badge.inner_text() == "loaded"
    assert row.locator("td").nth(2).inner_text().endswith("MiB")  # memory
    assert page.locator("tr[data-model='smollm2-135m-instruct'] td").nth(3).inner_text() \
        == "forever"  # preload models stay
    screenshot(page, "models")
    try:
        row.get_by_role("button", name=f"Unload {EMBEDDING_MODEL}").click()
        wait_until(page, f"{BADGE} === 'not loaded'")
        assert _state(server, EMBEDDING_MODEL) == "unloaded"
        row.get_by_role("button", name=f"Load {EMBEDDING_MODEL}").click()
        wait_until(page, f"{BADGE} === 'loaded'", timeout_s=60)
        assert _state(server, EMBEDDING_MODEL) == "loaded"
        # the table was redrawn; the keyboard focus stayed on that row's button
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") \
            == f"Unload {EMBEDDING_MODEL}"
    finally:  # leave the server as the other tests expect it
        httpx.post(f"{server.base_url}/admin/models/{EMBEDDING_MODEL}/load", timeout=60)


def _legend(page, series: str) -> str:
    return page.locator(f"strong[data-series='{series}']").inner_text()


# Whether the tokens/s chart drew any point above its zero line.
TOKENS_ROSE = """[...document.querySelectorAll("figure[data-chart='Generated tokens/s'] polyline")]
  .some((line) => line.getAttribute('points').split(' ')
    .some((xy) => parseFloat(xy.split(',')[1]) < 101.5))"""


def test_metrics_charts_follow_the_server(page, server):
    open_console(page, server, "metrics")
    charts = page.locator("#metrics-charts figure.chart")
    charts.first.wait_for()
    assert charts.count() == 5
    wait_until(page, text_of("strong[data-series='running']") + " === '0'")
    assert _legend(page, "p50") == "–"  # no request in the last 30 s yet
    # MiB, or GiB once the audio tests have loaded Whisper into the server
    assert re.fullmatch(r"\d+(\.\d)? [MG]iB", _legend(page, "process RSS"))
    assert not page.evaluate(f"() => {TOKENS_ROSE}")
    body = {"model": "default", "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": "Name the planets of the solar system."}]}
    # the page keeps polling by itself while this call blocks
    resp = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=300)
    assert resp.status_code == 200
    wait_until(page, TOKENS_ROSE, timeout_s=20)
    wait_until(page, text_of("strong[data-series='p50']") + " !== '–'", timeout_s=20)
    wait_until(page, text_of("strong[data-series='running']") + " === '0'")
    screenshot(page, "metrics")


def test_the_api_key_is_asked_once_and_kept_for_the_tab(browser, auth_server):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        page.goto(auth_server.base_url + "/")
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")
        # nothing works without the key: the page got no model list
        assert page.locator("#chat-model option").count() == 0
        screenshot(page, "api-key")
        page.fill("#key-input", "not-the-key")
        page.press("#key-input", "Enter")
        wait_until(page, text_of("#key-error") + " !== ''")
        assert dialog.is_visible()
        page.fill("#key-input", API_KEY)
        page.press("#key-input", "Enter")
        dialog.wait_for(state="hidden")
        wait_until(page, MODELS_LISTED)
        assert page.evaluate("Object.values(sessionStorage)") == [API_KEY]
        page.reload()  # same tab: the key is remembered
        wait_until(page, MODELS_LISTED)
        assert not dialog.is_visible()
        other = context.new_page()  # another tab asks again
        other.goto(auth_server.base_url + "/")
        other.locator("#key-dialog").wait_for(state="visible")
    finally:
        context.close()


def test_tabs_work_from_the_keyboard(page, server):
    open_console(page, server)
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#panel-embeddings") and not page.is_visible("#panel-chat")
    assert page.evaluate("document.activeElement.id") == "tab-embeddings"
    page.keyboard.press("End")
    assert page.is_visible("#panel-metrics")
    page.keyboard.press("Home")
    assert page.is_visible("#panel-chat")
    page.keyboard.press("Tab")  # from the tab list into the panel's first control
    assert page.evaluate("document.activeElement.id") == "chat-model"


def test_phone_width_stacks_the_panels_without_sideways_scrolling(browser, server):
    context = browser.new_context(viewport=PHONE, is_mobile=True, color_scheme="light")
    page = context.new_page()
    try:
        open_console(page, server)
        settings = page.locator("#chat-settings").bounding_box()
        conversation = page.locator(".conversation").bounding_box()
        assert conversation["y"] >= settings["y"] + settings["height"]
        for panel in ("chat", "embeddings", "audio", "models", "metrics"):
            page.click(f"#tab-{panel}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{panel} panel is {width}px wide"
        tops = page.evaluate("[...document.querySelectorAll('[role=tab]')].map((t) => t.offsetTop)")
        assert len(set(tops)) == 1, f"the tabs wrap: {tops}"
        page.click("#tab-chat")
        screenshot(page, "phone-chat")
    finally:
        context.close()


def test_dark_theme_follows_the_system_setting(browser, server):
    colours = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)
        page = context.new_page()
        try:
            open_console(page, server, "models")
            colours[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
            if scheme == "dark":
                page.locator("tr[data-model]").first.wait_for()
                screenshot(page, "models-dark")
        finally:
            context.close()
    assert colours == {"light": "rgb(246, 247, 249)", "dark": "rgb(17, 20, 24)"}


def test_reasoning_is_split_from_the_answer(page, server):
    """No default model reasons, so the page's own splitter is checked in the browser."""
    open_console(page, server)
    split = page.evaluate("""async () => {
      const { splitReasoning } = await import('/console/js/chat_message.js');
      return [splitReasoning('<think>plan</think>Paris.'),
              splitReasoning('still thinking</think>Done'),
              splitReasoning('<think>open'), splitReasoning('plain <think> text')];
    }""")
    assert split == [{"reasoning": "plan", "answer": "Paris."},
                     {"reasoning": "still thinking", "answer": "Done"},
                     {"reasoning": "open", "answer": ""},
                     {"reasoning": "", "answer": "plain <think> text"}]
