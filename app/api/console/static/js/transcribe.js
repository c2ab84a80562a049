// Speech to text: a recorded or uploaded clip → /v1/audio/transcriptions (or /translations)
// as verbose_json → the text, the detected language and each segment with its times.

import { failureText, request } from "./api.js";
import { byId, formatNumber, h, showNote } from "./dom.js";
import { fillModelFields, pickedModel } from "./models.js";
import { extensionFor, Recorder, recordingUnavailable } from "./recorder.js";

const recorder = new Recorder();
let sttModels = [];
let clip = null; // { blob, name }: the recording or file that Transcribe sends
let clipUrl = null;
let ticker = null;

const note = (text, isError = false) => showNote(byId("stt-info"), text, isError);

/** Fill the picker with the speech-to-text models; without any, the card says so. */
export function setTranscriptionModels(models) {
  sttModels = fillModelFields("stt", models, ["transcriptions", "translations"], "whisper-1");
  syncTask();
}

/** Offer only the tasks the picked model can do; the language applies to transcription. */
function syncTask() {
  const capabilities = pickedModel("stt", sttModels)?.metadata?.capabilities || [];
  const task = byId("stt-task");
  for (const option of task.options) option.disabled = !capabilities.includes(option.value);
  if (task.selectedOptions[0]?.disabled) {
    task.value = [...task.options].find((o) => !o.disabled)?.value ?? task.value;
  }
  byId("stt-language").disabled = task.value !== "transcriptions";
}

function setClip(blob, name) {
  if (clipUrl) URL.revokeObjectURL(clipUrl);
  clip = { blob, name };
  clipUrl = URL.createObjectURL(blob);
  const player = byId("stt-clip");
  player.src = clipUrl;
  player.hidden = false;
}

function setBusy(busy) {
  byId("stt-run").disabled = busy;
  byId("stt-record").disabled = busy || recordingUnavailable() !== null;
}

function segmentItem(segment) {
  const times = `${formatNumber(segment.start)}–${formatNumber(segment.end)} s`;
  return h("li", {}, h("span", { class: "times" }, times), segment.text.trim());
}

function showTranscript(body) {
  const text = body.text.trim();
  const segments = body.segments || [];
  const parts = [h("p", { class: text ? "transcript-text" : "transcript-text muted" },
                     text || "(no speech found)")];
  if (segments.length > 1) {
    parts.push(h("ol", { class: "segments", "aria-label": "Segments" },
                 ...segments.map(segmentItem)));
  }
  byId("stt-text").replaceChildren(...parts);
}

async function transcribe() {
  if (!clip) {
    note("Choose an audio file or record one first.", true);
    return;
  }
  const task = byId("stt-task").value;
  const form = new FormData();
  form.append("file", clip.blob, clip.name);
  form.append("model", byId("stt-model").value);
  form.append("response_format", "verbose_json");
  const language = byId("stt-language").value.trim();
  if (task === "transcriptions" && language) form.append("language", language);
  setBusy(true);
  note(task === "translations" ? "Translating…" : "Transcribing…");
  const started = performance.now();
  try {
    const response = await request(`/v1/audio/${task}`, { method: "POST", body: form });
    const body = await response.json();
    const ms = Math.round(performance.now() - started);
    showTranscript(body);
    const requestId = body.htdi?.requestId ?? response.headers.get("x-request-id");
    const language = body.language.charAt(0).toUpperCase() + body.language.slice(1);
    note(`${formatNumber(body.duration)} s of ${language} `
      + `${task === "translations" ? "translated" : "transcribed"} in ${ms} ms `
      + `(request ${requestId}).`);
  } catch (err) {
    byId("stt-text").replaceChildren();
    note(failureText(err), true);
  } finally {
    setBusy(false);
  }
}

async function toggleRecording() {
  const button = byId("stt-record");
  if (recorder.recording) {
    clearInterval(ticker);
    const blob = await recorder.stop();
    button.textContent = "Record";
    button.setAttribute("aria-pressed", "false");
    byId("stt-file").value = "";
    setClip(blob, `recording.${extensionFor(blob.type)}`);
    await transcribe();
    return;
  }
  try {
    await recorder.start();
  } catch (err) {
    note(`The microphone is not available: ${err.message}`, true);
    return;
  }
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  byId("stt-run").disabled = true;
  const tick = () => note(`Recording… ${Math.floor(recorder.elapsed())} s. `
    + "Stop recording sends it.");
  tick();
  ticker = setInterval(tick, 500);
}

export function initTranscription() {
  const unavailable = recordingUnavailable();
  const record = byId("stt-record");
  if (unavailable) {
    record.disabled = true;
    record.title = unavailable;
    note(unavailable);
  }
  record.addEventListener("click", toggleRecording);
  byId("stt-model").addEventListener("change", syncTask);
  byId("stt-task").addEventListener("change", syncTask);
  byId("stt-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setClip(file, file.name);
  });
  byId("stt-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!recorder.recording) transcribe();
  });
}
