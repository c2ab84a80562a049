// The models panel: the registry with each model's state, memory, keep-alive and last use;
// load and unload buttons when the server has its admin routes.

import { ApiError, getJSON } from "./api.js";
import { byId, formatAgo, formatBytes, formatSeconds, h, setOptions } from "./dom.js";

let config = { admin: false, keep_alive_default_s: 1800 };
let onChange = () => {};
const actionErrors = new Map(); // model id → why its last load/unload failed

export function initModels(serverConfig, refresh) {
  config = serverConfig;
  onChange = refresh;
  byId("models-refresh").addEventListener("click", () => onChange());
  byId("models-table").classList.toggle("no-admin", !config.admin);
  byId("models-note").textContent = config.admin
    ? "Load and unload call /admin/models/{id}/load and /unload."
    : "This server does not offer the admin routes: models load on first use.";
}

function keepAlive(meta) {
  const seconds = meta.keep_alive ?? (meta.preload ? -1 : config.keep_alive_default_s);
  if (seconds < 0) return "forever";
  if (seconds === 0) return "unload when idle";
  return formatSeconds(seconds);
}

/** loaded (idle or in use), loading, not loaded (files local), not cached, failed. */
function stateCell(meta) {
  let label = meta.state;
  let detail = null;
  if (meta.state === "unloaded") {
    label = meta.cached === false ? "not cached" : "not loaded";
    detail = meta.cached === false ? "loading it downloads it first" : "files on disk";
  } else if (meta.state === "loaded") {
    detail = meta.in_flight > 0 ? "in use" : "idle";
  }
  const cls = label === "not cached" ? "state-not-cached" : `state-${meta.state}`;
  return [h("span", { class: `badge ${cls}` }, label),
          detail && h("div", { class: "muted small" }, detail),
          meta.error && h("div", { class: "error-text small" }, meta.error)];
}

async function adminAction(model, action, button) {
  button.disabled = true;
  button.textContent = action === "load" ? "Loading…" : "Unloading…";
  actionErrors.delete(model.id);
  try {
    await getJSON(`/admin/models/${encodeURIComponent(model.id)}/${action}`, { method: "POST" });
  } catch (err) {
    actionErrors.set(model.id, err instanceof ApiError ? err.message : String(err));
  }
  await onChange();
  focusRowButton(model.id); // the pressed button was disabled, which dropped the focus
}

function actions(model) {
  const meta = model.metadata;
  const busy = meta.state === "loading";
  const loaded = meta.state === "loaded";
  const button = h("button", { type: "button", disabled: busy,
                               "aria-label": `${loaded ? "Unload" : "Load"} ${model.id}` },
                   loaded ? "Unload" : "Load");
  button.addEventListener("click", () => adminAction(model, loaded ? "unload" : "load", button));
  return [button, h("div", { class: "row-error error-text small", role: "alert" },
                    actionErrors.get(model.id) || "")];
}

/** Redraw the table from a /v1/models listing. */
export function renderModels(models) {
  const rows = models.map((model) => {
    const meta = model.metadata || {};
    const aliases = (meta.aliases || []).length ? ` (${meta.aliases.join(", ")})` : "";
    return h("tr", { "data-model": model.id },
      h("th", { scope: "row" }, h("span", { class: "model-id" }, model.id),
        h("span", { class: "muted small" }, aliases)),
      // data-label: the column's name, shown in each cell where the table becomes cards
      h("td", { "data-label": "Type" }, `${meta.type}`, h("div", { class: "muted small" },
        (meta.capabilities || []).join(", "))),
      h("td", { class: "state", "data-label": "State" }, ...stateCell(meta)),
      h("td", { "data-label": "Memory" },
        meta.state === "loaded" ? formatBytes(meta.memory_bytes) : "–"),
      h("td", { "data-label": "Keep-alive" }, keepAlive(meta)),
      h("td", { "data-label": "Last use" }, formatAgo(meta.last_used)),
      h("td", { "data-label": "In flight" }, String(meta.in_flight ?? 0)),
      h("td", { class: "admin-col" }, ...(config.admin ? actions(model) : [])));
  });
  // a refresh must not take the keyboard focus away from the button it was on
  const focused = document.activeElement?.closest?.("#models-table tr[data-model]");
  byId("models-table").tBodies[0].replaceChildren(...rows);
  if (focused) focusRowButton(focused.dataset.model);
}

function focusRowButton(modelId) {
  const row = [...byId("models-table").tBodies[0].rows].find((r) => r.dataset.model === modelId);
  row?.querySelector("button")?.focus();
}

/**
 * Fill a model picker with the models that have any of `capabilities`, the one with the
 * alias `preferredAlias` selected by default. Returns those models.
 */
export function fillModelPicker(select, models, capabilities, preferredAlias) {
  const usable = models.filter((m) => (m.metadata?.capabilities || [])
    .some((c) => capabilities.includes(c)));
  const preferred = usable.find((m) => (m.metadata?.aliases || []).includes(preferredAlias));
  setOptions(select, usable.map((m) => m.id), preferred?.id);
  return usable;
}

/**
 * Fill the picker `${prefix}-model` of a panel part that needs a model; without one, its
 * note `${prefix}-none` shows and its fieldset `${prefix}-fields` is disabled. Returns the
 * usable models.
 */
export function fillModelFields(prefix, models, capabilities, preferredAlias) {
  const usable = fillModelPicker(byId(`${prefix}-model`), models, capabilities, preferredAlias);
  byId(`${prefix}-none`).hidden = usable.length > 0;
  byId(`${prefix}-fields`).disabled = usable.length === 0;
  return usable;
}

/** The model that the picker `${prefix}-model` shows, from the models it was filled with. */
export function pickedModel(prefix, usable) {
  return usable.find((m) => m.id === byId(`${prefix}-model`).value);
}

/** The current listing (also feeds the model pickers). */
export async function fetchModels() {
  const body = await getJSON("/v1/models");
  return body.data;
}
