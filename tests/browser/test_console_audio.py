"""The audio panel in a real browser against the real server: an uploaded or recorded clip
is transcribed by Whisper base, typed text is spoken by hibari and played by the page.

The spoken clip comes from the server's own /v1/audio/speech; the microphone is Chromium's
fake capture device playing that clip. Both audio models load on first use.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import (
    API_KEY,
    fresh_page,
    launch,
    screenshot,
    text_of,
    wait_until,
)
from tests.browser.test_console_chat import open_console
from tests.e2e.test_audio_e2e import words

SENTENCE = "Please switch off the lamp in the hallway."
KEY_WORDS = {"switch", "lamp", "hallway"}
PCM_RATE = 24000  # /v1/audio/speech's pcm: 16-bit little-endian mono at 24 kHz
MODEL_LOAD_S = 900  # a cold cache pulls and converts Whisper on first use (as in tests/e2e)
STT_DONE = "!document.querySelector('#stt-run').disabled"
PLAYER = "document.querySelector('#tts-audio')"
# The player holds a clip it can play: its length known, its first frames decoded.
PLAYABLE = f"{PLAYER}.readyState >= 2 && Number.isFinite({PLAYER}.duration)"


@pytest.fixture(scope="module", autouse=True)
def unload_audio_models_after(server) -> Iterator[None]:
    """Leave the shared server as the other modules expect it: the audio models unloaded."""
    yield
    for model in ("whisper-base", "hibari-tts"):
        httpx.post(f"{server.base_url}/admin/models/{model}/unload", timeout=60)


@pytest.fixture(scope="module")
def spoken_clip(server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE spoken by hibari, as a WAV file with half a second of silence after it."""
    r = httpx.post(f"{server.v1}/audio/speech", timeout=MODEL_LOAD_S,
                   json={"model": "tts-1", "input": SENTENCE, "response_format": "pcm"})
    assert r.status_code == 200, r.text
    path = tmp_path_factory.mktemp("audio") / "lamp.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(PCM_RATE)
        out.writeframes(r.content + bytes(PCM_RATE))
    return path


def clip_seconds(path: Path) -> float:
    with wave.open(str(path)) as clip:
        return clip.getnframes() / clip.getframerate()


def heard(page) -> set[str]:
    """The key words of SENTENCE found in the transcript, once it is shown."""
    wait_until(page, STT_DONE, timeout_s=MODEL_LOAD_S)
    assert not failed(page, "#stt-info"), page.inner_text("#stt-info")
    return KEY_WORDS & set(words(page.inner_text("#stt-text")))


def failed(page, note: str) -> bool:
    return page.evaluate(f"document.querySelector({note!r}).classList.contains('error-text')")


def wait_for_speech(page, extra_condition: str = "true") -> None:
    """Wait until the player can play the speech, or the page says why it cannot."""
    wait_until(page, f"({PLAYABLE} && {extra_condition}) || "
                     "document.querySelector('#tts-info').classList.contains('error-text')",
               timeout_s=MODEL_LOAD_S)
    assert not failed(page, "#tts-info"), page.inner_text("#tts-info")


def open_audio(page, server) -> None:
    open_console(page, server, "audio")
    wait_until(page, "document.querySelector('#stt-model').options.length > 0")


def test_an_uploaded_clip_is_transcribed_and_typed_text_is_spoken(page, server, spoken_clip):
    open_audio(page, server)
    assert page.is_visible("#panel-audio") and not page.is_visible("#panel-chat")
    # stt / tts models only, the OpenAI aliases' models picked
    assert page.locator("#stt-model option").all_inner_texts() == ["whisper-base"]
    assert page.locator("#tts-model option").all_inner_texts() == ["hibari-tts"]
    assert page.locator("#tts-voice option").all_inner_texts() == ["heart"]
    page.set_input_files("#stt-file", spoken_clip)
    assert page.is_visible("#stt-clip")  # the clip can be listened to before it is sent
    page.click("#stt-run")
    assert len(heard(page)) >= 2, page.inner_text("#stt-text")
    info = page.inner_text("#stt-info")
    assert "of English transcribed" in info and "request req-" in info, info

    page.fill("#tts-input", "Dinner is ready. Please come to the kitchen.")
    page.click("#tts-run")
    wait_for_speech(page)
    assert page.evaluate(f"{PLAYER}.duration") > 1.5
    wait_until(page, f"{PLAYER}.currentTime > 0")  # Speak also started playing it
    assert "of wav" in page.inner_text("#tts-info")
    screenshot(page, "audio")


# Plays the page's speech once more through an analyser; returns its peak level (full
# scale 1) and how long it played. (Playwright keeps no copy of a streamed response body.)
PLAY_AND_MEASURE = """async () => {
  const player = document.querySelector('#tts-audio');
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  context.createMediaElementSource(player).connect(analyser);
  analyser.connect(context.destination);
  await context.resume();
  player.currentTime = 0;
  await player.play();
  const frame = new Float32Array(analyser.fftSize);
  const started = performance.now();
  let peak = 0;
  while (!player.ended) {
    analyser.getFloatTimeDomainData(frame);
    for (const x of frame) peak = Math.max(peak, Math.abs(x));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return [peak, (performance.now() - started) / 1000];
}"""


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_speech_in_other_formats_plays(page, server, fmt):
    open_audio(page, server)
    page.select_option("#tts-format", fmt)
    page.fill("#tts-input", "The front door is locked.")
    page.press("#tts-input", "Control+Enter")  # the keyboard speaks too
    wait_for_speech(page, f"{text_of('#tts-info')}.includes('of {fmt}')")
    seconds = page.evaluate(f"{PLAYER}.duration")
    peak, played = page.evaluate(PLAY_AND_MEASURE)
    assert seconds > 1 and peak > 0.05, (seconds, peak)  # speech, not silence
    assert played > seconds - 0.3, (played, seconds)
    assert page.get_attribute("#tts-download", "download") == f"speech.{fmt}"


def test_translate_sends_the_clip_to_the_translations_route(page, server, spoken_clip):
    open_audio(page, server)
    page.select_option("#stt-task", "translations")
    assert page.is_disabled("#stt-language")  # translations take no language
    page.set_input_files("#stt-file", spoken_clip)
    with page.expect_request("**/v1/audio/translations"):
        page.click("#stt-run")
    assert len(heard(page)) >= 2, page.inner_text("#stt-text")
    assert "of English translated" in page.inner_text("#stt-info")


def test_a_file_that_is_not_audio_shows_the_servers_error(page, server):
    data = b"shopping list: milk, eggs"
    expected = httpx.post(f"{server.v1}/audio/transcriptions", timeout=60,
                          files={"file": ("notes.wav", data)},
                          data={"model": "whisper-1"}).json()["error"]["message"]
    open_audio(page, server)
    page.set_input_files("#stt-file", {"name": "notes.wav", "mimeType": "audio/wav",
                                       "buffer": data})
    page.click("#stt-run")
    wait_until(page, STT_DONE)
    assert failed(page, "#stt-info")
    info = page.inner_text("#stt-info")
    assert info.startswith(expected) and "(request req-" in info, info
    assert page.inner_text("#stt-text") == ""


def test_a_recording_from_the_microphone_is_transcribed(playwright, server, spoken_clip):
    # Chromium's fake microphone plays the clip (over and over) to getUserMedia
    browser = launch(playwright, "--use-fake-ui-for-media-stream",
                     "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={spoken_clip}")
    try:
        with fresh_page(browser) as page:
            open_audio(page, server)
            assert page.get_attribute("#stt-record", "aria-pressed") == "false"
            page.click("#stt-record")
            wait_until(page, text_of("#stt-record") + " === 'Stop recording'")
            assert page.get_attribute("#stt-record", "aria-pressed") == "true"
            seconds = int(clip_seconds(spoken_clip)) + 2
            wait_until(page, text_of("#stt-info") + f".includes('Recording… {seconds} s')",
                       timeout_s=seconds + 10)
            page.click("#stt-record")  # stop: the recording is sent at once
            assert len(heard(page)) >= 2, page.inner_text("#stt-text")
            assert page.inner_text("#stt-record") == "Record"
            assert page.evaluate("document.querySelector('#stt-clip').src").startswith("blob:")
    finally:
        browser.close()


def without_audio_models(route) -> None:
    """Answer /v1/models with the server's listing minus its stt and tts models."""
    response = route.fetch()
    body = response.json()
    body["data"] = [m for m in body["data"] if m["metadata"]["type"] not in ("stt", "tts")]
    route.fulfill(response=response, json=body)


def test_without_audio_models_the_panel_says_so_and_is_disabled(page, server):
    page.route("**/v1/models", without_audio_models)
    page.goto(server.base_url + "/#audio")
    wait_until(page, "document.querySelector('#chat-model').options.length > 0")
    assert page.is_visible("#stt-none") and page.is_visible("#tts-none")
    assert page.is_disabled("#stt-file") and page.is_disabled("#stt-record")
    assert page.is_disabled("#tts-input") and page.is_disabled("#tts-run")
    assert page.locator("#stt-model option").count() == 0


def test_audio_calls_carry_the_api_key(browser, auth_server):
    with fresh_page(browser) as page:
        page.goto(auth_server.base_url + "/#audio")
        page.locator("#key-dialog").wait_for(state="visible")
        page.fill("#key-input", API_KEY)
        page.press("#key-input", "Enter")
        wait_until(page, "document.querySelector('#tts-model').options.length > 0")
        page.click("#tts-run")
        wait_for_speech(page)
        # an upload is a multipart request: it carries the key as well (the server decodes
        # before it would load Whisper, so a bad file answers at once)
        page.set_input_files("#stt-file", {"name": "notes.wav", "mimeType": "audio/wav",
                                           "buffer": b"not audio"})
        page.click("#stt-run")
        wait_until(page, text_of("#stt-info") + ".includes('Invalid audio file')")
        assert not page.is_visible("#key-dialog")
