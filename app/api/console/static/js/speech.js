// Text to speech: /v1/audio/speech → the audio file as a Blob → an <audio> element that
// plays it (and a link to save it).

import { failureText, request } from "./api.js";
import { byId, formatBytes, formatNumber, setOptions, showNote } from "./dom.js";
import { fillModelFields, pickedModel } from "./models.js";

const FALLBACK_VOICE = "alloy"; // OpenAI's default; a model that lists no voices takes it
let ttsModels = [];
let audioUrl = null;

const note = (text, isError = false) => showNote(byId("tts-info"), text, isError);

/** Fill the picker with the speech models; without any, the card says so. */
export function setSpeechModels(models) {
  ttsModels = fillModelFields("tts", models, ["speech"], "tts-1");
  syncVoices();
}

/** The picked model's own voices (metadata.voices). */
function syncVoices() {
  const voices = pickedModel("tts", ttsModels)?.metadata?.voices || [];
  setOptions(byId("tts-voice"), voices.length ? voices : [FALLBACK_VOICE]);
}

/** Play `blob` in the page's player once it knows the clip's length; resolves with it. */
function play(blob, format) {
  if (audioUrl) URL.revokeObjectURL(audioUrl);
  audioUrl = URL.createObjectURL(blob);
  const player = byId("tts-audio");
  const download = byId("tts-download");
  download.href = audioUrl;
  download.download = `speech.${format}`;
  download.hidden = false;
  const ready = new Promise((resolve, reject) => {
    player.addEventListener("loadedmetadata", () => resolve(player.duration), { once: true });
    player.addEventListener("error", () => reject(new Error(
      `This browser cannot play the ${format} audio (${player.error?.message || "no reason"})`
      + ": try another format.")), { once: true });
  });
  player.src = audioUrl;
  player.hidden = false;
  // the click on Speak allows playing with sound; a browser that still refuses leaves the
  // player's own play button
  player.play().catch(() => {});
  return ready;
}

async function speak() {
  const format = byId("tts-format").value;
  const body = {
    model: byId("tts-model").value,
    input: byId("tts-input").value.trim(),
    voice: byId("tts-voice").value,
    response_format: format,
    speed: Number(byId("tts-speed").value),
  };
  if (!body.input) {
    note("Type some text to speak.", true);
    return;
  }
  const button = byId("tts-run");
  button.disabled = true;
  note("Synthesizing…");
  const started = performance.now();
  try {
    const response = await request("/v1/audio/speech", { method: "POST", body });
    const blob = await response.blob();
    const ms = Math.round(performance.now() - started);
    const seconds = await play(blob, format);
    const length = Number.isFinite(seconds) ? `${formatNumber(seconds)} s of audio, ` : "";
    note(`${length}${formatBytes(blob.size)} of ${format} in ${ms} ms `
      + `(request ${response.headers.get("x-request-id")}).`);
  } catch (err) {
    note(failureText(err), true);
  } finally {
    button.disabled = false;
  }
}

export function initSpeech() {
  byId("tts-model").addEventListener("change", syncVoices);
  byId("tts-form").addEventListener("submit", (event) => {
    event.preventDefault();
    speak();
  });
  byId("tts-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      byId("tts-form").requestSubmit();
    }
  });
}
