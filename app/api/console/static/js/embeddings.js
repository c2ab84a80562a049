// Embeddings: a few sentences → /v1/embeddings → their cosine similarity matrix as an SVG
// heat map (each cell labelled with its value, so colour is never the only cue).

import { ApiError, getJSON } from "./api.js";
import { byId, s } from "./dom.js";
import { fillModelPicker } from "./models.js";

const CELL = 64;
const LABEL = 190; // room for the row labels
const TOP = 26; // room for the column numbers

export function setEmbeddingModels(models) {
  fillModelPicker(byId("embed-model"), models, ["embeddings"], "default-embedding");
}

export function initEmbeddings() {
  byId("embed-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const sentences = byId("embed-input").value.split("\n").map((t) => t.trim())
      .filter(Boolean);
    const info = byId("embed-info");
    info.classList.remove("error-text");
    if (sentences.length < 2) {
      info.textContent = "Enter at least two sentences.";
      return;
    }
    const button = byId("embed-run");
    button.disabled = true;
    info.textContent = "Embedding…";
    try {
      const started = performance.now();
      const body = await getJSON("/v1/embeddings", {
        method: "POST", body: { model: byId("embed-model").value, input: sentences } });
      const ms = performance.now() - started;
      const vectors = body.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
      drawHeatmap(sentences, similarityMatrix(vectors));
      info.textContent = `${vectors.length} vectors of ${vectors[0].length} dimensions in `
        + `${Math.round(ms)} ms, ${body.usage.prompt_tokens} tokens `
        + `(request ${body.htdi.requestId}).`;
    } catch (err) {
      info.textContent = err instanceof ApiError ? err.message : String(err);
      info.classList.add("error-text");
    } finally {
      button.disabled = false;
    }
  });
}

/** Cosine similarity of every pair (vectors need not be normalised). */
export function similarityMatrix(vectors) {
  const norms = vectors.map((v) => Math.sqrt(v.reduce((acc, x) => acc + x * x, 0)) || 1);
  return vectors.map((a, i) => vectors.map((b, j) => {
    let dot = 0;
    for (let k = 0; k < a.length; k += 1) dot += a[k] * b[k];
    return dot / (norms[i] * norms[j]);
  }));
}

/** Colour for a similarity in [-1, 1]: from the panel background to the accent. */
function cellColour(value) {
  const t = Math.max(0, Math.min(1, value));
  return `color-mix(in oklab, var(--accent) ${Math.round(t * 100)}%, var(--surface))`;
}

function shorten(text, max = 22) { // fits the label column at the SVG's font size
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function drawHeatmap(sentences, matrix) {
  const n = sentences.length;
  const width = LABEL + n * CELL;
  const svg = s("svg", { viewBox: `0 0 ${width} ${TOP + n * CELL}`, role: "img",
                         "aria-label": "Cosine similarity heat map", class: "heatmap-svg" });
  sentences.forEach((text, i) => {
    const label = `${i + 1}. ${shorten(text)}`;
    svg.append(s("text", { x: LABEL - 8, y: TOP + i * CELL + CELL / 2, class: "row-label",
                           "text-anchor": "end", "dominant-baseline": "middle" },
                 s("title", {}, text), label));
    svg.append(s("text", { x: LABEL + i * CELL + CELL / 2, y: TOP - 8, class: "col-label",
                           "text-anchor": "middle" }, `${i + 1}`));
  });
  matrix.forEach((row, i) => row.forEach((value, j) => {
    const x = LABEL + j * CELL;
    const y = TOP + i * CELL;
    const rect = s("rect", { x, y, width: CELL - 2, height: CELL - 2, rx: 4 });
    rect.style.fill = cellColour(value); // a CSS colour: attributes cannot use var()
    svg.append(s("g", { class: "cell", "data-row": i, "data-col": j,
                        "data-value": value.toFixed(4) },
      s("title", {}, `${sentences[i]} ↔ ${sentences[j]}: ${value.toFixed(3)}`),
      rect,
      s("text", { x: x + CELL / 2 - 1, y: y + CELL / 2, "text-anchor": "middle",
                  "dominant-baseline": "middle", class: value > 0.6 ? "on-strong" : "" },
        value.toFixed(2))));
  }));
  byId("embed-heatmap").replaceChildren(svg);
}
