// Start-up: tabs, the server's console settings (which also asks for the API key when the
// server wants one), then each panel; the model list is refreshed every few seconds.

import { getJSON } from "./api.js";
import { initChat, setChatModels } from "./chat.js";
import { byId, setStatus } from "./dom.js";
import { initEmbeddings, setEmbeddingModels } from "./embeddings.js";
import { fetchModels, initModels, renderModels } from "./models.js";
import { initMetrics } from "./metrics.js";
import { initSpeech, setSpeechModels } from "./speech.js";
import { initTranscription, setTranscriptionModels } from "./transcribe.js";

const MODELS_POLL_MS = 5000;

function tabs() {
  return [...document.querySelectorAll('[role="tab"]')];
}

/** Show one panel; keyboard focus follows when the user moved with the arrow keys. */
function selectTab(tab, focus = false) {
  for (const other of tabs()) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    byId(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
}

function initTabs() {
  const list = tabs();
  list.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: list.length - 1 };
      if (!(event.key in moves)) return;
      event.preventDefault();
      selectTab(list[(moves[event.key] + list.length) % list.length], true);
    });
  });
  const wanted = byId(`tab-${location.hash.slice(1)}`);
  if (wanted) selectTab(wanted);
}

async function refreshModels() {
  try {
    const models = await fetchModels();
    renderModels(models);
    setChatModels(models);
    setEmbeddingModels(models);
    setTranscriptionModels(models);
    setSpeechModels(models);
    const loaded = models.filter((m) => m.metadata?.state === "loaded").length;
    setStatus(`${models.length} models, ${loaded} loaded`);
  } catch (err) {
    setStatus(`Models: ${err.message}`, true);
  }
}

async function start() {
  initTabs();
  initChat();
  initEmbeddings();
  initTranscription();
  initSpeech();
  let config;
  try {
    config = await getJSON("/console/config");
  } catch (err) {
    setStatus(`The console cannot start: ${err.message}`, true);
    return;
  }
  initModels(config, refreshModels);
  initMetrics(config);
  await refreshModels();
  setInterval(() => {
    if (document.visibilityState === "visible") refreshModels();
  }, MODELS_POLL_MS);
}

start();
