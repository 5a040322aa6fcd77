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
import { mutatedLines, runFor, secondsFromArgs } from "./fuzz-common.mjs";
import { CHARTS, parseMetrics, seriesPoints, turningPoints } from "../metrics.js";

const seconds = secondsFromArgs();

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
// The sample run's lines, mutated.
const mutatedSample = mutatedLines(sampleLines);

runFor("metrics_viewer", seconds, [anyText, jsonLines, recordish, mutatedSample], check);
