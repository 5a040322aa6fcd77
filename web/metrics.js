// Reads `metrics.jsonl` (what `daa train` writes and the demo's worker
// produces): one JSON record per line, `"type"` train / eval / event.
// A line that is not such a record is named (line number and reason) and
// skipped; the rest is kept.

/** @typedef {{train: object[], eval: object[], events: object[], problems: string[]}} Run */

/** An empty run. @returns {Run} */
export function emptyRun() {
  return { train: [], eval: [], events: [], problems: [] };
}

/** Adds one record to a run; returns an error message or null. */
export function addRecord(run, record) {
  if (record === null || typeof record !== "object" || Array.isArray(record)) {
    return "not a JSON object";
  }
  if (!Number.isFinite(record.step)) {
    return "no numeric `step`";
  }
  switch (record.type) {
    case "train":
      run.train.push(record);
      return null;
    case "eval":
      run.eval.push(record);
      return null;
    case "event":
      run.events.push(record);
      return null;
    default:
      return `unknown record type ${JSON.stringify(record.type)} (expected train, eval or event)`;
  }
}

/** Parses `metrics.jsonl` text. @returns {Run} */
export function parseMetrics(text, source = "metrics.jsonl") {
  const run = emptyRun();
  const lines = text.split(/\r?\n/);
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    let record;
    try {
      record = JSON.parse(line);
    } catch (e) {
      run.problems.push(`${source}: line ${i + 1}: not JSON (${e.message}); skipped`);
      return;
    }
    const problem = addRecord(run, record);
    if (problem) run.problems.push(`${source}: line ${i + 1}: ${problem}; skipped`);
  });
  return run;
}

/** The charts, each a list of series read from the run. */
export const CHARTS = [
  {
    id: "loglik",
    title: "Held-out log-likelihood per token (nats)",
    series: [
      { label: "chosen", source: "eval", key: "eval/chosen_token_loglik", color: "#1b7837" },
      { label: "rejected", source: "eval", key: "eval/rejected_token_loglik", color: "#c51b7d" },
    ],
  },
  {
    id: "entropy",
    title: "Top-k entropy (bits)",
    series: [
      { label: "held-out", source: "eval", key: "eval/topk_entropy", color: "#2166ac" },
      { label: "own samples", source: "eval", key: "eval/sample_topk_entropy", color: "#92c5de" },
    ],
    turning: "topk_entropy",
  },
  {
    id: "mass",
    title: "Top-k probability mass",
    series: [
      { label: "held-out", source: "eval", key: "eval/topk_mass", color: "#b2182b" },
      { label: "own samples", source: "eval", key: "eval/sample_topk_mass", color: "#f4a582" },
    ],
    turning: "topk_mass",
  },
  {
    id: "win",
    title: "Win probability against the reference",
    series: [{ label: "P(win)", source: "eval", key: "eval/win_prob", color: "#542788" }],
    reference: 0.5,
  },
  {
    id: "ead",
    title: "Diversity of samples (EAD, n = 1…5)",
    series: [{ label: "EAD", source: "eval", key: "eval/ead", color: "#8c510a" }],
  },
  {
    id: "loss",
    title: "Training loss (and NLL weight λ)",
    series: [
      { label: "loss", source: "train", key: "loss", color: "#404040" },
      { label: "λ", source: "train", key: "train/nll_weight", color: "#e08214" },
    ],
  },
];

/** Points `[step, value]` of one series (missing and non-finite values left out). */
export function seriesPoints(run, series) {
  const records = series.source === "train" ? run.train : run.eval;
  const points = [];
  for (const r of records) {
    const v = r[series.key];
    if (typeof v === "number" && Number.isFinite(v)) points.push([r.step, v]);
  }
  return points;
}

/** Turning points of one indicator: `{step, peak_step}` per confirmed turn. */
export function turningPoints(run, indicator) {
  return run.events
    .filter((e) => e.event === "eval/turning_point" && e.indicator === indicator)
    .map((e) => ({ step: e.step, peak_step: e.peak_step }));
}
