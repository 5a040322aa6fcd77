// Property-based fuzzing of the run viewer's `metrics.jsonl` reader
// (web/metrics.js) with fast-check: random text, random JSON lines, and the
// sample run with lines mutated, cut and spliced. For every input:
// parseMetrics does not throw; every line that is not blank is either one
// record (an object with a finite `step`, in the list of its type) or one
// problem naming its line; the chart series hold finite numbers only.
//
//   node metrics.fuzz.mjs [--time SECONDS]      (default 5; CI runs the default)
//
// Not coverage-guided (fast-check generates and shrinks; it does not
// measure coverage); a failure prints the shrunk input and exits 1.

import { readFileSync } from "node:fs";
import fc from "fast-check";
import { CHARTS, parseMetrics, seriesPoints, turningPoints } from "../metrics.js";

const args = process.argv.slice(2);
const timeAt = args.indexOf("--time");
const seconds = timeAt >= 0 ? Number(args[timeAt + 1]) : 5;
if (!(seconds > 0)) {
  console.error("--time takes a number of seconds");
  process.exit(2);
}

const sampleLines = readFileSync(new URL("./sample-metrics.jsonl", import.meta.url), "utf8").split("\n").filter((l) => l);

/** The properties every parse must have. */
function check(text) {
  const run = parseMetrics(text, "fuzz.jsonl");
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
  const kept = run.train.length + run.eval.length + run.events.length;
  if (kept + run.problems.length !== lines.length) {
    throw new Error(`${lines.length} lines, but ${kept} records and ${run.problems.length} problems`);
  }
  for (const [type, list] of [["train", run.train], ["eval", run.eval], ["event", run.events]]) {
    for (const r of list) {
      if (r === null || typeof r !== "object" || r.type !== type || !Number.isFinite(r.step)) {
        throw new Error(`a kept ${type} record is malformed: ${JSON.stringify(r)}`);
      }
    }
  }
  for (const p of run.problems) {
    if (typeof p !== "string" || !/^fuzz\.jsonl: line \d+: /.test(p)) throw new Error(`problem without its line: ${p}`);
  }
  for (const chart of CHARTS) {
    for (const series of chart.series) {
      for (const [step, value] of seriesPoints(run, series)) {
        if (!Number.isFinite(step) || !Number.isFinite(value)) throw new Error(`${series.key}: non-finite point`);
      }
    }
    if (chart.turning) turningPoints(run, chart.turning);
  }
}

const anyText = fc.string({ unit: "binary", maxLength: 400 });
const jsonLines = fc.array(fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? "null"), { maxLength: 20 }).map((ls) => ls.join("\n"));
const recordish = fc
  .array(
    fc.record({
      type: fc.constantFrom("train", "eval", "event", "other", 7, null),
      step: fc.oneof(fc.integer(), fc.double(), fc.string(), fc.constant(null)),
      "eval/topk_entropy": fc.oneof(fc.double(), fc.string(), fc.constant(null)),
      loss: fc.oneof(fc.double(), fc.constant(null)),
      event: fc.constantFrom("eval/turning_point", "x"),
      indicator: fc.constantFrom("topk_entropy", "topk_mass"),
    }, { requiredKeys: [] }),
    { maxLength: 20 },
  )
  .map((rs) => rs.map((r) => JSON.stringify(r)).join("\n"));
// The sample run, mutated: lines dropped, cut, duplicated, joined with CRLF or garbage.
const mutatedSample = fc
  .tuple(
    fc.subarray(sampleLines),
    fc.array(fc.tuple(fc.nat(), fc.nat(), fc.string({ maxLength: 8 })), { maxLength: 6 }),
    fc.constantFrom("\n", "\r\n", "\n\n"),
  )
  .map(([lines, edits, newline]) => {
    const out = [...lines];
    for (const [at, cut, insert] of edits) {
      if (out.length === 0) break;
      const i = at % out.length;
      const line = out[i];
      const c = cut % (line.length + 1);
      out[i] = line.slice(0, c) + insert + line.slice(c);
    }
    return out.join(newline);
  });

const started = Date.now();
let runs = 0;
const result = fc.check(
  fc.property(fc.oneof(anyText, jsonLines, recordish, mutatedSample), (text) => {
    runs += 1;
    check(text);
  }),
  { numRuns: Number.MAX_SAFE_INTEGER, interruptAfterTimeLimit: seconds * 1000, markInterruptAsFailure: false, seed: Date.now() | 0 },
);
const elapsed = (Date.now() - started) / 1000;
if (result.failed) {
  console.error(fc.defaultReportMessage(result));
  process.exit(1);
}
console.log(`metrics_viewer: ${runs} inputs in ${elapsed.toFixed(0)} s, no failure (fast-check seed ${result.seed})`);
