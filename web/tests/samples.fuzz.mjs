// Property-based fuzzing of the run viewer's `samples.jsonl` reader
// (web/samples.js) with fast-check: random text, random JSON lines, records
// with fields of every type, and the sample file with lines mutated, cut and
// spliced. For every input: parseSamples does not throw; every line that is
// not blank is either one kept sample (finite `step`, whole `index` ≥ 0,
// string texts, numbers finite or null) or one problem naming its line; the
// steps, each step's rows, its summary (web/samples-table.js's line too) and
// the file's kind are computed without throwing and are consistent.
//
//   node samples.fuzz.mjs [--time SECONDS]      (default 5; CI runs the default)
//
// Not coverage-guided (fast-check generates and shrinks; it does not
// measure coverage); a failure prints the shrunk input and exits 1.

import { readFileSync } from "node:fs";
import fc from "fast-check";
import { mutatedLines, runFor, secondsFromArgs } from "./fuzz-common.mjs";
import { parseSamples, runFileKind, sampleSteps, samplesAtStep, summariseStep } from "../samples.js";
import { summaryText } from "../samples-table.js";

const seconds = secondsFromArgs();

const sampleLines = readFileSync(new URL("./sample-samples.jsonl", import.meta.url), "utf8").split("\n").filter((l) => l);

const finiteOrNull = (v) => v === null || (typeof v === "number" && Number.isFinite(v));

/** The properties every parse must have. */
function check(text) {
  const samples = parseSamples(text, "fuzz.jsonl");
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
  if (samples.rows.length + samples.problems.length !== lines.length) {
    throw new Error(`${lines.length} lines, but ${samples.rows.length} samples and ${samples.problems.length} problems`);
  }
  for (const r of samples.rows) {
    const ok =
      Number.isFinite(r.step) &&
      Number.isInteger(r.index) &&
      r.index >= 0 &&
      ["prompt", "completion", "reference_completion"].every((k) => typeof r[k] === "string") &&
      ["reward", "reference_reward", "log_ratio", "kl", "length", "reference_length"].every((k) => finiteOrNull(r[k])) &&
      ["finish", "reference_finish"].every((k) => r[k] === null || typeof r[k] === "string");
    if (!ok) throw new Error(`a kept sample is malformed: ${JSON.stringify(r)}`);
  }
  for (const p of samples.problems) {
    if (typeof p !== "string" || !/^fuzz\.jsonl: line \d+: /.test(p)) throw new Error(`problem without its line: ${p}`);
  }
  const steps = sampleSteps(samples);
  if (new Set(samples.rows.map((r) => r.step)).size !== steps.length) throw new Error("steps lost or repeated");
  for (let i = 1; i < steps.length; i++) if (!(steps[i - 1] < steps[i])) throw new Error(`steps not ascending: ${steps}`);
  for (const step of steps) {
    const rows = samplesAtStep(samples, step);
    if (rows.length === 0) throw new Error(`step ${step} has no rows`);
    for (let i = 1; i < rows.length; i++) if (!(rows[i - 1].index < rows[i].index)) throw new Error(`step ${step}: indices not ascending`);
    const s = summariseStep(rows);
    if (s.n !== rows.length || !(s.wins <= s.compared && s.compared <= s.n)) throw new Error(`step ${step}: counts ${JSON.stringify(s)}`);
    if (s.winFraction !== null && !(s.winFraction >= 0 && s.winFraction <= 1)) throw new Error(`step ${step}: win fraction ${s.winFraction}`);
    for (const m of [s.reward, s.referenceReward, s.kl]) {
      if (!finiteOrNull(m.mean) || m.count > s.n || (m.count === 0) !== (m.mean === null)) throw new Error(`step ${step}: mean ${JSON.stringify(m)}`);
    }
    if (typeof summaryText(step, rows) !== "string") throw new Error(`step ${step}: no summary line`);
  }
  for (const name of ["fuzz.jsonl", "samples.jsonl", "run/metrics.jsonl"]) {
    const kind = runFileKind(name, text);
    if (kind !== "metrics" && kind !== "samples") throw new Error(`kind ${kind}`);
  }
}

const anyText = fc.string({ unit: "binary", maxLength: 400 });
const jsonLines = fc.array(fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? "null"), { maxLength: 20 }).map((ls) => ls.join("\n"));
const anyNumber = fc.oneof(fc.integer(), fc.double(), fc.string({ maxLength: 4 }), fc.constant(null), fc.boolean());
const anyText8 = fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.constant(null));
const recordish = fc
  .array(
    fc.record(
      {
        step: fc.oneof(fc.integer({ min: -2, max: 3 }), fc.double(), fc.string({ maxLength: 3 }), fc.constant(null)),
        index: fc.oneof(fc.integer({ min: -1, max: 3 }), fc.double(), fc.constant(null)),
        prompt: anyText8,
        completion: anyText8,
        reference_completion: anyText8,
        reward: anyNumber,
        reference_reward: anyNumber,
        log_ratio: anyNumber,
        kl: anyNumber,
        length: anyNumber,
        reference_length: anyNumber,
        finish: fc.oneof(fc.constantFrom("stop", "length"), fc.integer(), fc.constant(null)),
        reference_finish: fc.oneof(fc.constantFrom("stop", "length"), fc.constant(null)),
      },
      { requiredKeys: [] },
    ),
    { maxLength: 20 },
  )
  .map((rs) => rs.map((r) => JSON.stringify(r)).join("\n"));
// The sample file's lines, mutated.
const mutatedSample = mutatedLines(sampleLines);

runFor("samples_viewer", seconds, [anyText, jsonLines, recordish, mutatedSample], check);
