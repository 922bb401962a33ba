"""The browser page (clients/web) end to end: headless Chromium against a real server.

The page is driven like a user would (file input, buttons, API key field) and checked through
its test hook, ``window.pmmtalkState``, plus the face canvas's pixels. The run also writes the
README's screenshot, docs/screenshots/browser.png, taken mid-utterance with the mouth open.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.server.conftest import SAMPLE_WAV, RunningServer, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # WebAudio runs without a click
    "--use-fake-device-for-media-stream",  # a microphone that beeps
    "--use-fake-ui-for-media-stream",  # grants it without a prompt
]
API_KEY = "browser-test-key"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "browser.png"
TIMEOUT_MS = 30_000
FACE_PIXELS_JS = "() => document.getElementById('face').toDataURL()"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt)"
    ),
]


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    """Keys on, so the page's key field and the server's refusal are both exercised."""
    with serve(security={"api_keys": (API_KEY,)}) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Debian's chromium, never `playwright install` (it downloads browsers).
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class PageLog:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self, page: Page) -> None:
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)


def open_page(browser: Browser, url: str) -> tuple[Page, PageLog]:
    page = browser.new_page(viewport={"width": 1000, "height": 580})
    page.set_default_timeout(TIMEOUT_MS)
    log = PageLog(page)
    page.goto(url)
    return page, log


def state(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate("() => ({...window.pmmtalkState, info: null})")
    return value


def test_file_is_streamed_and_animates_the_face(
    browser: Browser, keyed_server: RunningServer
) -> None:
    page, log = open_page(browser, f"{keyed_server.http}/?api_key={API_KEY}")
    page.wait_for_function("() => window.pmmtalkState.info !== null")
    neutral = page.evaluate(FACE_PIXELS_JS)

    page.set_input_files("#audio-file", str(SAMPLE_WAV))
    page.click("#start-file")
    # Well into the utterance, on an open mouth: the moment the README's screenshot shows.
    page.wait_for_function(
        "() => pmmtalkState.displayed.index > 40 && pmmtalkState.displayed.jawOpen > 0.4"
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    speaking = page.evaluate(
        "() => ({face: document.getElementById('face').toDataURL(), "
        "jaw: pmmtalkState.displayed.jawOpen, frames: pmmtalkState.framesReceived})"
    )
    assert speaking["face"] != neutral  # the face moved
    assert speaking["frames"] > 40

    page.wait_for_function("() => ['done', 'error'].includes(pmmtalkState.status)")
    final = state(page)
    assert final["errors"] == [] and final["status"] == "done"
    samples = sf.info(SAMPLE_WAV).frames
    expected = math.ceil(samples * 30 / 16_000)  # the protocol's frame count for 16 kHz audio
    assert final["expectedFrames"] == expected
    assert final["framesReceived"] == final["doneFrames"] == expected
    assert final["framesInOrder"]
    assert [c["code"] for c in final["closes"]] == [1000]  # the page closed after done

    # Every frame's lag was measured and is shown.
    lag = final["lag"]
    assert lag["count"] == expected
    assert 0 < lag["medianMs"] <= lag["p95Ms"] < 10_000
    assert "median" in page.inner_text("#fig-lag")
    assert page.inner_text("#fig-frames") == f"{expected} / {expected}"

    # The page decoded the binary frames into the right values: those of POST /animate.
    frames = np.array(
        page.evaluate(
            f"() => Array.from({{length: {expected}}}, (_, i) => pmmtalkState.frameAt(i))"
        )
    )
    with SAMPLE_WAV.open("rb") as audio:
        offline = httpx.post(
            f"{keyed_server.http}/animate",
            files={"audio": audio},
            headers={"X-API-Key": API_KEY},
            timeout=60,
        ).json()
    assert frames.shape == (expected, 32)
    assert float(np.abs(frames - np.array(offline["frames"])).mean()) < 0.01

    assert log.console_errors == [] and log.page_errors == []
    page.close()


def test_microphone_streams_frames(browser: Browser, keyed_server: RunningServer) -> None:
    page, log = open_page(browser, f"{keyed_server.http}/?api_key={API_KEY}")
    page.wait_for_function("() => window.pmmtalkState.info !== null")
    page.click("#start-mic")
    page.wait_for_function("() => pmmtalkState.framesReceived >= 12")
    page.click("#stop")
    page.wait_for_function("() => ['done', 'error'].includes(pmmtalkState.status)")
    final = state(page)
    assert final["errors"] == [] and final["status"] == "done"
    assert final["mode"] == "mic" and final["framesInOrder"]
    assert final["framesReceived"] == final["doneFrames"] >= 12
    assert final["lag"]["count"] > 0
    assert log.console_errors == [] and log.page_errors == []
    page.close()


def test_key_errors_show_the_server_message(browser: Browser, keyed_server: RunningServer) -> None:
    refusal = httpx.get(f"{keyed_server.http}/info").json()["error"]
    page, log = open_page(browser, f"{keyed_server.http}/")  # no key: /info refuses
    page.wait_for_function("() => pmmtalkState.errors.length > 0")
    assert state(page)["errors"][0]["code"] == "unauthorized"
    assert refusal["message"] in page.inner_text("#error")

    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("() => pmmtalkState.info !== null")
    assert page.is_hidden("#error")

    # A wrong key on the stream: the server's error message and its close code, both shown.
    page.fill("#api-key", "wrong-key")
    page.set_input_files("#audio-file", str(SAMPLE_WAV))
    page.click("#start-file")
    page.wait_for_function("() => pmmtalkState.closes.length > 0")
    page.wait_for_function("() => pmmtalkState.status === 'error'")
    final = state(page)
    assert final["closes"][0]["code"] == 1008
    assert "unauthorized" in {e["code"] for e in final["errors"]}
    shown = page.inner_text("#error")
    assert refusal["message"] in shown
    assert "code 1008 (policy violation)" in shown
    assert final["framesReceived"] == 0
    assert log.page_errors == []  # the refused requests log console errors by design
    page.close()
