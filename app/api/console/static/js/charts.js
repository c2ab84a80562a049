// A small hand-drawn SVG time-series chart: one or two lines over a fixed time window,
// a zero-based y axis with its top value, and a legend with each line's latest value.

import { h, s } from "./dom.js";

const W = 320;
const H = 120;
const PAD = { left: 58, right: 8, top: 8, bottom: 18 };

/** "Nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

/** The same for byte counts, in binary units: 790 MiB → 1000 MiB. */
export function niceBytes(max) {
  if (!(max > 0)) return 1024;
  const unit = 1024 ** Math.floor(Math.log(max) / Math.log(1024));
  return niceMax(max / unit) * unit;
}

export class LineChart {
  /**
   * series: [{name, cls}] (cls picks the line colour in CSS); format(value) labels values;
   * the y axis tops at fixedMax, else at nice(largest value).
   */
  constructor(title, series, format, { fixedMax = null, nice = niceMax } = {}) {
    this.series = series;
    this.format = format;
    this.fixedMax = fixedMax;
    this.nice = nice;
    this.svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
                          "aria-label": title });
    this.legend = h("ul", { class: "legend" });
    this.el = h("figure", { class: "chart", "data-chart": title },
                h("figcaption", {}, title), this.svg, this.legend);
  }

  /**
   * points: [{t (seconds), values: [v per series, null for a gap]}], oldest first, drawn
   * over the `windowSeconds` before `now`.
   */
  draw(points, now, windowSeconds) {
    const start = now - windowSeconds;
    const visible = points.filter((p) => p.t >= start);
    const values = visible.flatMap((p) => p.values).filter((v) => v !== null);
    const top = this.fixedMax ?? this.nice(Math.max(0, ...values));
    const x = (t) => PAD.left + ((t - start) / windowSeconds) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
    const parts = [
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0), class: "axis" }),
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top), y2: y(top), class: "grid" }),
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top / 2), y2: y(top / 2),
                  class: "grid" }),
      s("text", { x: PAD.left - 4, y: y(top), class: "tick", "text-anchor": "end",
                  "dominant-baseline": "middle" }, this.format(top)),
      s("text", { x: PAD.left - 4, y: y(0), class: "tick", "text-anchor": "end",
                  "dominant-baseline": "middle" }, this.format(0)),
      s("text", { x: PAD.left, y: H - 4, class: "tick" },
        `−${Math.round(windowSeconds / 60)} min`),
      s("text", { x: W - PAD.right, y: H - 4, class: "tick", "text-anchor": "end" }, "now"),
    ];
    this.series.forEach((serie, i) => {
      for (const run of segments(visible, i)) {
        const coords = run.map((p) => `${x(p.t).toFixed(1)},${y(p.values[i]).toFixed(1)}`);
        if (run.length === 1) {
          const [cx, cy] = coords[0].split(",");
          parts.push(s("circle", { cx, cy, r: 2, class: `dot ${serie.cls}` }));
        } else {
          parts.push(s("polyline", { points: coords.join(" "), class: `line ${serie.cls}` }));
        }
      }
    });
    this.svg.replaceChildren(...parts);
    const last = visible[visible.length - 1];
    this.legend.replaceChildren(...this.series.map((serie, i) => {
      const value = last ? last.values[i] : null;
      return h("li", { class: serie.cls },
        h("span", { class: "swatch", "aria-hidden": "true" }), `${serie.name}: `,
        h("strong", { "data-series": serie.name }, value === null ? "–" : this.format(value)));
    }));
  }
}

/** Runs of consecutive points where series i has a value (nulls break the line). */
function segments(points, i) {
  const runs = [];
  let run = [];
  for (const point of points) {
    if (point.values[i] === null || point.values[i] === undefined) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push(point);
    }
  }
  if (run.length) runs.push(run);
  return runs;
}
