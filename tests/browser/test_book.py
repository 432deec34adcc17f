"""The built book in a real browser: headless Chromium (Debian's) driven by Playwright.

Run after `make book`. Every page is served from 127.0.0.1 and must load with no console error and no request that
leaves 127.0.0.1; math must render; widgets must render and respond to their controls with no kernel; Chinese characters
must render in the book's own font (book/_static/cjk.css), Latin text in the theme's fonts as before. The appendix
is also opened from disk (file://) to prove the book works offline.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDGET_RENDER_MS = 8000  # widgets render about a second after the load event; allow for a slow CI machine


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium not found: install Debian's chromium (apt-get install chromium); .ci/run does this")
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output to the test results
        pass


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `make book` first")
    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=chromium_path(), headless=True,
            args=CHROMIUM_FLAGS,
        )
        yield context
        context.close()


class PageWatch:
    """Opens a page, records console errors and every request that leaves the allowed origin (and blocks it)."""

    def __init__(self, context, allow_scheme: str):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.fetched: list[str] = []  # every request let through
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
        self.page.route("**/*", functools.partial(self._route, allow_scheme))

    def _route(self, allow_scheme, route):
        url = urlparse(route.request.url)
        local = url.scheme in ("data", "blob") or (
            url.scheme == allow_scheme and (allow_scheme == "file" or url.hostname == "127.0.0.1"))
        if local:
            self.fetched.append(route.request.url)
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def open(self, url: str):
        self.page.goto(url, wait_until="load")
        self.page.wait_for_timeout(1500)
        return self.page


def all_pages() -> list[str]:
    return sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html") if "_static" not in p.parts)


def test_every_page_loads_cleanly(server, browser):
    pages = all_pages()
    assert "book/appendix_parameters.html" in pages and "index.html" in pages
    for name in pages:
        watch = PageWatch(browser, "http")
        watch.open(f"{server}/{name}")
        assert not watch.outside, f"{name} requested outside 127.0.0.1: {watch.outside}"
        assert not watch.errors, f"{name} logged errors: {watch.errors}"
        watch.page.close()


def test_every_page_is_under_1_mb():
    sizes = {name: (HTML / name).stat().st_size for name in all_pages()}
    heavy = {name: round(size / 1e6, 2) for name, size in sizes.items() if size >= 1_000_000}
    assert not heavy, f"pages of 1 MB or more (MB): {heavy}"


def test_math_renders(server, browser):
    page = PageWatch(browser, "http").open(f"{server}/book/appendix_parameters.html")
    page.wait_for_selector("mjx-container", timeout=WIDGET_RENDER_MS)
    assert page.locator("mjx-container").count() >= 3


def _check_appendix_widget(page):
    dropdown = page.locator(".widget-dropdown select").first
    dropdown.wait_for(timeout=WIDGET_RENDER_MS)
    table = page.locator("table.llmbook-table").first
    before = table.inner_text()
    assert "65,000,000" in before and "6500万" in before
    dropdown.select_option(label="GPT-3")
    page.wait_for_timeout(300)
    after = page.locator("table.llmbook-table").first.inner_text()
    assert "175,000,000,000" in after and "一千七百五十亿" in after
    assert page.locator("img.widget-image").count() >= 1


def test_appendix_widget_works_without_a_kernel(server, browser):
    watch = PageWatch(browser, "http")
    _check_appendix_widget(watch.open(f"{server}/book/appendix_parameters.html"))
    assert not watch.errors and not watch.outside


def test_appendix_widget_works_from_disk(browser):
    watch = PageWatch(browser, "file")
    page = watch.open((HTML / "book" / "appendix_parameters.html").as_uri())
    _check_appendix_widget(page)
    assert not watch.outside, f"requests left the disk: {watch.outside}"
    _book_cjk_fonts(page, "table.llmbook-table td", "亿")  # GPT-3's row: the CJK font loads from disk too


# --- the book's Chinese font (book/_static/cjk.css, made by tools/subset_cjk_font.py) ------------------------------
CJK_FAMILY = "LLMBook CJK"  # the @font-face family of book/_static/cjk.css
CJK_CLASS = r"[\u2e80-\u9fff\uf900-\ufaff\ufe10-\ufe4f\uff00-\uffef]"  # CJK characters, as a JavaScript regex

# Marks the first element matching a selector whose text contains `needle` (or, with no needle, that has text and
# no CJK character at all) with data-font-probe=NAME; answers whether it found one.
_MARK_JS = """([selector, needle, name, cjk]) => {
  const re = new RegExp(cjk);
  const el = [...document.querySelectorAll(selector)].find(
    e => needle ? e.textContent.includes(needle) : e.textContent.trim() !== "" && !re.test(e.textContent));
  if (el) el.setAttribute("data-font-probe", name);
  return Boolean(el);
}"""

_FACES_JS = """async (family) => {
  await document.fonts.ready;
  return [...document.fonts].filter(f => f.family.replace(/["']/g, "") === family)
    .map(f => ({weight: f.weight, status: f.status}));
}"""


def _rendered_fonts(page, selectors: dict[str, tuple[str, str | None]]) -> dict[str, dict[str, bool]]:
    """For each named (selector, needle) probe, the fonts Chromium drew its element's text with, as reported by the
    DevTools protocol (CSS.getPlatformFontsForNode): {PostScript name: whether it is a web font}."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    fonts = {}
    for name, (selector, needle) in selectors.items():
        if not page.evaluate(f"document.querySelector('[data-font-probe=\"{name}\"]') !== null"):
            assert page.evaluate(_MARK_JS, [selector, needle, name, CJK_CLASS]), f"no {name} ({selector})"
        root = cdp.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": f'[data-font-probe="{name}"]'})["nodeId"]
        used = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        fonts[name] = {font["postScriptName"]: font["isCustomFont"] for font in used}
    cdp.detach()
    return fonts


def _book_cjk_fonts(page, selector: str, needle: str) -> dict[str, bool]:
    """The fonts of the first `selector` element showing `needle`, asserting that the book's own font drew it."""
    fonts = _rendered_fonts(page, {"cjk": (selector, needle)})["cjk"]
    ours = {name for name, web in fonts.items() if web and name.startswith("NotoSansSC-")}
    assert ours, f"{needle!r} in {selector} was not drawn with the book's CJK font: {fonts}"
    return fonts


def test_chapter1_chinese_renders_in_the_books_font(server, browser):
    watch = PageWatch(browser, "http")
    page = watch.open(f"{server}/chapters/01_transformer.html")
    faces = page.evaluate(_FACES_JS, CJK_FAMILY)
    assert {"weight": "400", "status": "loaded"} in faces, f"{CJK_FAMILY} faces: {faces}"
    assert page.evaluate(f"document.fonts.check('16px \"{CJK_FAMILY}\"', '两')")
    fetched = {urlparse(url).path for url in watch.fetched if urlparse(url).hostname == "127.0.0.1"}
    assert "/_static/cjk/LLMBookCJK-Regular.woff" in fetched, "the CJK font was not fetched from the book"

    probes = {
        "output": (".cell_output pre", "两"),  # a stored output (monospace stack)
        "prose": ("article p", "两"),  # body text (base stack)
        "bold": ("article strong", "两"),  # the bold face
        "latin-output": (".cell_output pre", None),
        "latin-prose": ("article p", None),
        "latin-heading": ("article h1", None),
    }
    before = _rendered_fonts(page, probes)
    for name in ("output", "prose"):
        assert before[name].get("NotoSansSC-Regular") is True, f"{name}: {before[name]}"
    assert before["bold"].get("NotoSansSC-Bold") is True, f"bold: {before['bold']}"

    # Without book/_static/cjk.css the Latin text must look exactly the same, and the Chinese lose the book's font.
    page.evaluate("document.querySelector('link[href*=\"cjk.css\"]').disabled = true; document.body.offsetHeight")
    page.wait_for_timeout(200)
    after = _rendered_fonts(page, probes)
    for name in ("latin-output", "latin-prose", "latin-heading"):
        assert not any(font.startswith("NotoSansSC-") for font in before[name]), f"{name}: {before[name]}"
        assert before[name] == after[name], f"cjk.css changed the Latin fonts of {name}: {before[name]} {after[name]}"
    for name in ("output", "prose", "bold"):
        assert not any(web for web in after[name].values()), f"{name} without cjk.css: {after[name]}"
    assert not watch.errors and not watch.outside


def test_appendix_table_widget_renders_chinese_in_the_books_font(server, browser):
    watch = PageWatch(browser, "http")
    page = watch.open(f"{server}/book/appendix_parameters.html")
    page.locator("table.llmbook-table").first.wait_for(timeout=WIDGET_RENDER_MS)
    _book_cjk_fonts(page, ".widget-html table.llmbook-table td", "万")  # an ipywidgets HTML widget's table
    assert not watch.errors and not watch.outside


def _open_widget(server, browser, page_name, selector):
    """Open a built page over http and wait for the first widget matching ``selector``: (watch, page, widget)."""
    watch = PageWatch(browser, "http")
    page = watch.open(f"{server}/{page_name}")
    widget = page.locator(selector).first
    widget.wait_for(timeout=WIDGET_RENDER_MS)
    return watch, page, widget


def _nudge_first_slider(page, widget):
    """Move the widget's first slider one step to the right, as a reader's arrow key does."""
    handle = widget.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_timeout(300)


def _text_around_a_nudge(page, widget, selector):
    """The first visible ``selector`` element's text before and after ``_nudge_first_slider``."""
    before = widget.locator(f"{selector}:visible").first.inner_text()
    _nudge_first_slider(page, widget)
    return before, widget.locator(f"{selector}:visible").first.inner_text()


def test_chapter1_training_slider_replays_training(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/01_transformer.html",
        '.widget-vbox:has(.widget-slider):has-text("validation exact match")',
    )
    before = widget.locator("b", has_text="step").first.inner_text()
    _nudge_first_slider(page, widget)
    after = widget.locator("b", has_text="step").first.inner_text()
    assert before.startswith("step ") and after.startswith("step ")
    assert int(after.split()[1]) > int(before.split()[1]), (before, after)
    assert not watch.errors and not watch.outside


def test_chapter2_sample_grid_switches_samples(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/02_gpt1.html", '.widget-vbox:has(.widget-slider:has-text("temperature"))'
    )
    before, after = _text_around_a_nudge(page, widget, "pre")  # the temperature slider comes first
    assert before.startswith("ROMEO:") and after.startswith("ROMEO:")
    assert after != before
    assert not watch.errors and not watch.outside


def test_chapter3_similarity_menu_switches_sentence_sets(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/03_bert.html", '.widget-vbox:has(.widget-dropdown:has-text("sentences"))'
    )
    assert "The cat sits on the mat." in widget.inner_text()
    widget.locator(".widget-dropdown select").select_option(label="negation")
    page.wait_for_timeout(300)
    shown = widget.inner_text()
    assert "I do not love this play." in shown and "The cat sits on the mat." not in shown
    assert not watch.errors and not watch.outside


def test_chapter5_budget_slider_moves_the_allocation(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/05_scaling_laws.html", '.widget-vbox:has(.widget-slider:has-text("FLOPs"))'
    )
    before, after = _text_around_a_nudge(page, widget, "p")
    assert before.startswith("C = 1e+24 FLOPs") and after.startswith("C = 1e+25 FLOPs"), (before, after)
    assert "Kaplan" in widget.inner_text()
    assert not watch.errors and not watch.outside


def test_chapter6_shots_slider_walks_along_the_episode(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/06_gpt3.html", '.widget-vbox:has(.widget-slider:has-text("shots"))'
    )
    before, after = _text_around_a_nudge(page, widget, "code")
    assert after.startswith(before) and len(after) > len(before), (before, after)  # a longer context, same start
    assert "the value" in widget.inner_text()
    assert not watch.errors and not watch.outside


def test_chapter7_format_and_prompt_menus_switch_continuations(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/07_ollama.html", '.widget-vbox:has(.widget-dropdown:has-text("prompt"))'
    )
    before = widget.locator("pre:visible").first.inner_text()
    assert before.startswith("ROMEO:") and "llama.cpp, f32, greedy" in widget.inner_text()
    _nudge_first_slider(page, widget)  # the format slider: f32 -> f16
    assert "llama.cpp, f16, greedy" in widget.inner_text()
    widget.locator(".widget-dropdown select").select_option(index=2)  # the translation prompt
    page.wait_for_timeout(300)
    assert widget.locator("pre:visible").first.inner_text().startswith("In Chinese, three hundred and twelve")
    assert not watch.errors and not watch.outside


def test_chapter8_replay_slider_walks_through_the_game(server, browser):
    watch, page, widget = _open_widget(
        server, browser, "chapters/08_games.html", '.widget-vbox:has(.widget-slider:has-text("move"))'
    )
    before, after = _text_around_a_nudge(page, widget, "p")
    assert before.startswith("move 0: the empty board"), before
    assert after.startswith("move 1: the model played column"), after
    assert "the model's next move, probabilities" in before  # the model moves first: its probabilities show
    assert widget.locator("table.llmbook-table:visible").count() == 1  # one board at a time
    assert not watch.errors and not watch.outside
