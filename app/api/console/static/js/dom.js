// Small DOM and formatting helpers shared by the panels. Text always goes in as text
// nodes, never as HTML: model output and model ids are untrusted.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("p", {class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same call shape as h(). */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function byId(id) {
  return document.getElementById(id);
}

/** Fill a <select> with these ids unless it holds them already (keeps it usable while open). */
export function setOptions(select, ids, preferred) {
  const current = [...select.options].map((o) => o.value);
  if (current.join("\n") !== ids.join("\n")) {
    const previous = select.value;
    select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    select.value = ids.includes(previous) ? previous : (preferred ?? ids[0] ?? "");
  }
}

/** 1536 → "1.5 KiB"; null → "–". */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 || value >= 100 ? 0 : 1)} ${units[unit]}`;
}

/** Seconds as "45 s", "12 min", "3 h", "2 d". */
export function formatSeconds(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

/** A Unix time as "12 s ago"; null → "never". */
export function formatAgo(unixSeconds) {
  if (!unixSeconds) return "never";
  return `${formatSeconds(Math.max(0, Date.now() / 1000 - unixSeconds))} ago`;
}

/** A number with a sensible count of digits for its size. */
export function formatNumber(value, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return `${value.toFixed(digits)}${unit}`;
}

/** Show a line in the header's status area (errors stay until the next message). */
export function setStatus(text, isError = false) {
  const el = byId("server-status");
  el.textContent = text;
  el.classList.toggle("error-text", isError);
}

/** Put a line in a panel's note (role="status"), styled as an error when it is one. */
export function showNote(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error-text", isError);
}
