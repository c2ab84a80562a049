// Prometheus text exposition → samples, and the few queries the charts need (sums over
// label sets, rates and histogram quantiles computed as Prometheus does).

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Text → Map(name → [{labels, value}]). Comments and unparsable lines are skipped. */
export function parsePrometheus(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = LINE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[3] || "").matchAll(LABEL)) {
      labels[key] = value.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    const value = Number(match[4]);
    if (!out.has(match[1])) out.set(match[1], []);
    out.get(match[1]).push({ labels, value });
  }
  return out;
}

/** Sum of every sample of `name` (all models); null when the series is absent. */
export function total(samples, name) {
  const list = samples.get(name);
  if (!list || list.length === 0) return null;
  return list.reduce((acc, sample) => acc + sample.value, 0);
}

/** A histogram's cumulative buckets summed over label sets: [[le, count], ...] by le. */
export function buckets(samples, name) {
  const byLe = new Map();
  for (const sample of samples.get(`${name}_bucket`) || []) {
    const le = sample.labels.le === "+Inf" ? Infinity : Number(sample.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + sample.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

/** Bucket counts of `now` minus those of `before` (observations between two scrapes). */
export function bucketDelta(now, before) {
  const old = new Map(before || []);
  return now.map(([le, count]) => [le, Math.max(0, count - (old.get(le) || 0))]);
}

/**
 * The q-quantile of cumulative buckets, interpolated linearly inside the bucket, as
 * Prometheus' histogram_quantile does; null without observations.
 */
export function quantile(q, cumulative) {
  if (cumulative.length === 0) return null;
  const count = cumulative[cumulative.length - 1][1];
  if (count <= 0) return null;
  const rank = q * count;
  let lowerLe = 0;
  let lowerCount = 0;
  for (const [le, cum] of cumulative) {
    if (cum >= rank) {
      if (le === Infinity) return lowerLe; // beyond the last finite bound
      const inBucket = cum - lowerCount;
      return inBucket > 0 ? lowerLe + (le - lowerLe) * ((rank - lowerCount) / inBucket) : le;
    }
    lowerLe = le;
    lowerCount = cum;
  }
  return lowerLe;
}
