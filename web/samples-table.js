// The run viewer's "Samples" section: a step selector (one entry per
// evaluation in samples.jsonl, the last chosen), a one-line summary of that
// evaluation and its table, one row per held-out prompt. Every text from the
// file goes in with textContent: the file is untrusted.

import { beatsReference, sampleSteps, samplesAtStep, summariseStep } from "./samples.js";

const $ = (id) => document.getElementById(id);

/** A number with `digits` decimals, or "–" when it is not known. */
const fmt = (v, digits) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");

/** "policy / reference" of two values, each formatted with `format`. */
const pair = (a, b, format = (v) => (v === null ? "–" : String(v))) => `${format(a)} / ${format(b)}`;

/** A mean from `summariseStep`, with "(k of n known)" when some rows lacked it. */
function meanText(m, n, digits) {
  if (m.mean === null) return "–";
  return m.count < n ? `${fmt(m.mean, digits)} (${m.count} of ${n} known)` : fmt(m.mean, digits);
}

/** The summary line of one evaluation's rows. */
export function summaryText(step, rows) {
  const s = summariseStep(rows);
  const wins =
    s.winFraction === null ? "policy wins –" : `policy wins ${s.wins} of ${s.compared} (${Math.round(100 * s.winFraction)}%)`;
  return [
    `step ${step}: ${s.n} sample${s.n === 1 ? "" : "s"}`,
    `mean reward ${meanText(s.reward, s.n, 3)} vs reference ${meanText(s.referenceReward, s.n, 3)}`,
    wins,
    `mean KL ${meanText(s.kl, s.n, 2)}`,
  ].join(" · ");
}

/** A table cell; a text cell wraps its text in a scrolling box (long completions stay a few lines tall). */
function cell(text, cls) {
  const td = document.createElement("td");
  td.className = cls;
  if (cls === "text") {
    const box = document.createElement("div");
    box.className = text === "" ? "clip empty" : "clip";
    box.textContent = text;
    td.appendChild(box);
  } else {
    td.textContent = text;
  }
  return td;
}

/** One table row; rows where the policy beats the reference get the class `win` and a ✓. */
function row(r) {
  const tr = document.createElement("tr");
  const win = beatsReference(r);
  if (win) tr.className = "win";
  tr.dataset.index = String(r.index);
  tr.append(
    cell(String(r.index), "num"),
    cell(r.prompt, "text"),
    cell(r.completion, "text"),
    cell(fmt(r.reward, 3), "num"),
    cell(r.reference_completion, "text"),
    cell(fmt(r.reference_reward, 3), "num"),
    cell(win ? "✓" : "", "mark"),
    cell(fmt(r.log_ratio, 2), "num"),
    cell(fmt(r.kl, 2), "num"),
    cell(pair(r.length, r.reference_length), "num"),
    cell(pair(r.finish, r.reference_finish), "finish"),
  );
  return tr;
}

/** Shows the rows of the evaluation at `step` and its summary. */
function showStep(samples, step) {
  const rows = samplesAtStep(samples, step);
  $("run-samples-summary").textContent = summaryText(step, rows);
  $("run-samples-table").tBodies[0].replaceChildren(...rows.map(row));
}

/**
 * Fills the Samples section from parsed samples (web/samples.js), the last
 * evaluation shown; `null` empties it. Whether it is shown is the caller's.
 */
export function renderSamples(samples) {
  const select = $("run-samples-step");
  if (samples === null) {
    select.replaceChildren();
    $("run-samples-summary").textContent = "";
    $("run-samples-table").tBodies[0].replaceChildren();
    return;
  }
  const steps = sampleSteps(samples);
  select.replaceChildren(
    ...steps.map((step, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = `step ${step}`;
      return option;
    }),
  );
  select.disabled = steps.length === 0;
  select.onchange = () => showStep(samples, steps[Number(select.value)]);
  if (steps.length === 0) {
    $("run-samples-summary").textContent = "No sample could be read.";
    $("run-samples-table").tBodies[0].replaceChildren();
    return;
  }
  select.value = String(steps.length - 1);
  showStep(samples, steps[steps.length - 1]);
}
