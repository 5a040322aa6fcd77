// Reads `samples.jsonl` (written beside metrics.jsonl by a training run):
// one JSON object per line, one line per held-out prompt per evaluation,
// with the policy's sample and the reference's for the same prompt, the
// judge's rewards, the log-ratio, the prompt's KL, lengths and finish reasons.
// A line that is not such a record is named (line number and reason) and
// skipped; the rest is kept. Non-finite numbers arrive as `null` (serde_json)
// and stay `null`.

/**
 * One kept sample; numbers are finite or `null`, texts are strings.
 * @typedef {{step: number, index: number, prompt: string, completion: string,
 *   reference_completion: string, reward: ?number, reference_reward: ?number,
 *   log_ratio: ?number, kl: ?number, length: ?number, reference_length: ?number,
 *   finish: ?string, reference_finish: ?string}} Sample
 */
/** @typedef {{rows: Sample[], problems: string[]}} Samples */

const TEXTS = ["prompt", "completion", "reference_completion"];
const NUMBERS = ["reward", "reference_reward", "log_ratio", "kl", "length", "reference_length"];
const FINISHES = ["finish", "reference_finish"];

/** No samples. @returns {Samples} */
export function emptySamples() {
  return { rows: [], problems: [] };
}

/** Whether a parsed JSON value looks like a samples.jsonl record (it has both completions). */
export function isSampleRecord(record) {
  return record !== null && typeof record === "object" && !Array.isArray(record) && "completion" in record && "reference_completion" in record;
}

/** Adds one parsed record to `samples`; returns an error message or null. */
export function addSample(samples, record) {
  if (record === null || typeof record !== "object" || Array.isArray(record)) return "not a JSON object";
  if (!Number.isFinite(record.step)) return "no numeric `step`";
  if (!Number.isInteger(record.index) || record.index < 0) return "no `index` (a whole number, 0 or more)";
  for (const key of TEXTS) {
    if (typeof record[key] !== "string") return `no \`${key}\` text`;
  }
  const row = { step: record.step, index: record.index };
  for (const key of TEXTS) row[key] = record[key];
  for (const key of NUMBERS) row[key] = typeof record[key] === "number" && Number.isFinite(record[key]) ? record[key] : null;
  for (const key of FINISHES) row[key] = typeof record[key] === "string" ? record[key] : null;
  samples.rows.push(row);
  return null;
}

/** Parses `samples.jsonl` text. @returns {Samples} */
export function parseSamples(text, source = "samples.jsonl") {
  const samples = emptySamples();
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === "") return;
    let record;
    try {
      record = JSON.parse(line);
    } catch (e) {
      samples.problems.push(`${source}: line ${i + 1}: not JSON (${e.message}); skipped`);
      return;
    }
    const problem = addSample(samples, record);
    if (problem) samples.problems.push(`${source}: line ${i + 1}: ${problem}; skipped`);
  });
  return samples;
}

/** The evaluation steps present, ascending, each once. */
export function sampleSteps(samples) {
  return [...new Set(samples.rows.map((r) => r.step))].sort((a, b) => a - b);
}

/**
 * The rows of the evaluation at `step`, by prompt index. Where a prompt
 * appears twice at one step (a resumed run redid the evaluation), the later
 * line wins.
 */
export function samplesAtStep(samples, step) {
  const byIndex = new Map();
  for (const r of samples.rows) if (r.step === step) byIndex.set(r.index, r);
  return [...byIndex.values()].sort((a, b) => a.index - b.index);
}

/** Whether the policy's reward beats the reference's (both known, strictly greater). */
export function beatsReference(row) {
  return row.reward !== null && row.reference_reward !== null && row.reward > row.reference_reward;
}

/**
 * The mean of the finite numbers of `key` over `rows` and how many there
 * were (`mean` null when none); a running mean, finite even where the sum of
 * huge values would overflow.
 */
function meanOf(rows, key) {
  let mean = 0;
  let count = 0;
  for (const r of rows) {
    const v = r[key];
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    count += 1;
    mean += v / count - mean / count;
  }
  return { mean: count ? mean : null, count };
}

/**
 * One evaluation's figures: `n` rows; mean reward, mean reference reward and
 * mean KL over the rows where each is known (with their counts); `wins` rows
 * where the policy beats the reference, out of `compared` rows where both
 * rewards are known (`winFraction` null when none).
 */
export function summariseStep(rows) {
  const compared = rows.filter((r) => r.reward !== null && r.reference_reward !== null).length;
  const wins = rows.filter(beatsReference).length;
  return {
    n: rows.length,
    reward: meanOf(rows, "reward"),
    referenceReward: meanOf(rows, "reference_reward"),
    kl: meanOf(rows, "kl"),
    wins,
    compared,
    winFraction: compared ? wins / compared : null,
  };
}

/**
 * Which run file a text is: `"metrics"` or `"samples"`. Named
 * `metrics.jsonl` or `samples.jsonl` decides; otherwise the first line that
 * parses as a JSON object does (a samples line has `completion` and
 * `reference_completion`); with no such line, `"metrics"` (whose reader
 * then names every bad line).
 */
export function runFileKind(name, text) {
  const base = name.split(/[\\/]/).pop();
  if (base === "metrics.jsonl") return "metrics";
  if (base === "samples.jsonl") return "samples";
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "") continue;
    let record;
    try {
      record = JSON.parse(line);
    } catch {
      continue;
    }
    if (record === null || typeof record !== "object" || Array.isArray(record)) continue;
    return isSampleRecord(record) ? "samples" : "metrics";
  }
  return "metrics";
}
