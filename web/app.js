// The page: controls and URL, the training worker, live charts redrawn with
// requestAnimationFrame, the side-by-side samples, and the run viewer's
// controls (its loading and Samples table: viewer.js, samples-table.js).

import { CHARTS, addRecord, emptyRun } from "./metrics.js";
import { drawChart } from "./plot.js";
import { createViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const form = $("controls");

// URL parameter → settings path (and its type). The first group are the
// page's controls; the rest size the run (tests and experiments).
const PARAMS = {
  loss: ["loss", String],
  beta: ["beta", Number],
  tau: ["tau", Number],
  gamma: ["gamma", Number],
  alpha: ["alpha", Number],
  reg: ["regularisation", String],
  lambda: ["nll_weight", Number],
  lr: ["lr", Number],
  seed: ["seed", Number],
  steps: ["steps", Number],
  eval_every: ["eval_every", Number],
  batch: ["batch_size", Number],
  samples: ["sample_prompts", Number],
  hidden: ["testbed.hidden_size", Number],
  layers: ["testbed.layers", Number],
  sft_prompts: ["testbed.sft_prompts", Number],
  sft_steps: ["testbed.sft_steps", Number],
  sft_batch: ["testbed.sft_batch", Number],
  pairs: ["testbed.pairs", Number],
  eval_pairs: ["testbed.eval_pairs", Number],
};
const CONTROLS = ["loss", "beta", "tau", "gamma", "alpha", "reg", "lambda", "lr", "seed"];

const url = new URL(window.location.href);
const state = {
  worker: null,
  running: false,
  phase: null,
  run: emptyRun(),
  dirty: true,
  started: null,
  firstEvalMs: null,
  backend: null,
};
// What tests and curious people can read.
window.daaDemo = state;
// Main-thread tasks over 50 ms (the page must stay responsive while training).
state.longTasks = { count: 0, maxMs: 0 };
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      state.longTasks.count += 1;
      state.longTasks.maxMs = Math.max(state.longTasks.maxMs, Math.round(e.duration));
    }
  }).observe({ type: "longtask", buffered: true });
} catch {
  state.longTasks = null;
}

function setPath(target, path, value) {
  const keys = path.split(".");
  let o = target;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  o[keys[keys.length - 1]] = value;
}

/** The settings from the controls and the URL's sizing parameters. */
function settingsFromPage() {
  const settings = {};
  for (const [param, [path, type]] of Object.entries(PARAMS)) {
    const fromForm = CONTROLS.includes(param) ? form.elements[param].value : null;
    const raw = fromForm ?? url.searchParams.get(param);
    if (raw === null || raw === "") continue;
    setPath(settings, path, type === Number ? Number(raw) : raw);
  }
  return settings;
}

function syncUrl() {
  for (const name of CONTROLS) url.searchParams.set(name, form.elements[name].value);
  history.replaceState(null, "", url);
}

function showLossFields() {
  const loss = form.elements.loss.value;
  for (const el of form.querySelectorAll("[data-loss]")) el.hidden = el.dataset.loss !== loss;
}

for (const name of CONTROLS) {
  const v = url.searchParams.get(name);
  if (v !== null) form.elements[name].value = v;
}
showLossFields();
form.addEventListener("change", () => {
  showLossFields();
  syncUrl();
  if (state.worker) notice("Settings changed: press Reset to start a run with them.");
});

// ---------- charts ----------
const canvases = CHARTS.map((chart) => {
  const canvas = document.createElement("canvas");
  canvas.id = `chart-${chart.id}`;
  canvas.setAttribute("aria-label", chart.title);
  $("charts").appendChild(canvas);
  return canvas;
});

function frame() {
  if (state.dirty) {
    state.dirty = false;
    CHARTS.forEach((chart, i) => drawChart(canvases[i], chart, state.run));
  }
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
window.addEventListener("resize", () => (state.dirty = true));

// ---------- status ----------
function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function showError(text) {
  $("error-text").textContent = `The training worker stopped: ${text}`;
  $("error").hidden = false;
  setRunning(false);
}

function setRunning(running) {
  state.running = running;
  $("run-state").textContent = running ? "running" : state.phase === "done" ? "done" : state.worker ? "paused" : "idle";
  $("play").disabled = running || state.phase === "done";
  $("pause").disabled = !running;
  $("single").disabled = running || state.phase === "done";
}

const fmt = (v, digits = 4) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");

function showLatest() {
  const e = state.run.eval[state.run.eval.length - 1];
  const t = state.run.train[state.run.train.length - 1];
  const items = [];
  if (t) items.push(["step", t.step], ["loss", fmt(t.loss)]);
  if (e) {
    items.push(
      ["win prob", fmt(e["eval/win_prob"], 3)],
      ["chosen ll/token", fmt(e["eval/chosen_token_loglik"], 3)],
      ["top-k entropy", fmt(e["eval/topk_entropy"], 3)],
      ["top-k mass", fmt(e["eval/topk_mass"], 3)],
      ["EAD", fmt(e["eval/ead"], 3)],
      ["KL", fmt(e["eval/kl"], 2)],
    );
    // Its standard error over the prompts' samples (absent in runs written before it was recorded).
    if (e["eval/kl_se"] !== undefined) items.push(["KL s.e.", fmt(e["eval/kl_se"], 2)]);
  }
  if (t && t["train/nll_weight"] !== undefined) items.push(["λ", fmt(t["train/nll_weight"], 3)]);
  const turns = state.run.events.filter((ev) => ev.event === "eval/turning_point");
  for (const ev of turns) items.push([`${ev.indicator} turned`, `at ${ev.step} (peak ${ev.peak_step})`]);
  $("latest").replaceChildren(
    ...items.map(([k, v]) => {
      const span = document.createElement("span");
      span.dataset.figure = k;
      span.innerHTML = `${k} <b></b>`;
      span.querySelector("b").textContent = String(v);
      return span;
    }),
  );
}

function showSamples(rows) {
  const body = $("samples").tBodies[0];
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      for (const [text, cls] of [
        [r.prompt, "text"],
        [r.reference.text + (r.reference.ended ? "" : " …"), "text"],
        [fmt(r.reference.reward, 2), "num"],
        [r.policy.text + (r.policy.ended ? "" : " …"), "text"],
        [fmt(r.policy.reward, 2), "num"],
      ]) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }),
  );
}

// ---------- the worker ----------
function onMessage(event) {
  const m = event.data;
  switch (m.type) {
    case "ready":
      state.backend = m.backend;
      $("backend").textContent = m.backend;
      if (m.gpu === null) notice(`No WebGPU (${m.gpuProblem}): everything runs on the CPU (WebAssembly).`);
      break;
    case "progress": {
      const p = m.progress;
      state.phase = p.phase;
      $("phase").textContent = p.message;
      $("progress-bar").style.width = `${(100 * p.done) / Math.max(1, p.total)}%`;
      if (m.train.length) {
        for (const r of m.train) addRecord(state.run, { type: "train", ...r });
        $("speed").textContent = `${m.stepsPerSecond.toFixed(2)} steps/s`;
        state.dirty = true;
        showLatest();
      }
      break;
    }
    case "eval": {
      addRecord(state.run, { type: "eval", ...m.point.record });
      for (const ev of m.point.events) addRecord(state.run, { type: "event", ...ev });
      if (state.firstEvalMs === null) state.firstEvalMs = performance.now() - state.started;
      state.lastStats = { backend: m.point.stats_backend, check: m.point.stats_check, ms: m.point.stats_ms };
      if (m.point.stats_check !== undefined && m.point.stats_check !== null) {
        state.statsCheck = m.point.stats_check;
      }
      if (m.point.stats_choice) {
        state.statsChoice = m.point.stats_choice;
        notice(m.point.stats_choice);
      }
      state.backend = m.backend;
      $("backend").textContent = m.backend;
      state.dirty = true;
      $("download").disabled = false;
      showLatest();
      break;
    }
    case "samples":
      showSamples(m.rows);
      break;
    case "state":
      state.phase = m.phase;
      setRunning(m.running);
      if (m.phase === "done") $("phase").textContent = "every step trained and evaluated";
      break;
    case "snapshot": {
      const blob = new Blob([m.snapshot.metrics_jsonl], { type: "application/x-ndjson" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "metrics.jsonl";
      a.click();
      URL.revokeObjectURL(a.href);
      break;
    }
    case "notice":
      notice(m.message);
      break;
    case "error":
      showError(m.message);
      break;
    default:
      break;
  }
}

function startWorker() {
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  worker.onmessage = onMessage;
  worker.onerror = (e) => {
    e.preventDefault();
    showError(e.message || "the worker failed to load");
  };
  state.worker = worker;
  state.run = emptyRun();
  state.dirty = true;
  state.started = performance.now();
  state.firstEvalMs = null;
  const webgpu = url.searchParams.get("webgpu") !== "0";
  const stats = url.searchParams.get("stats") || "auto";
  worker.postMessage({ type: "start", settings: settingsFromPage(), webgpu, stats });
  $("error").hidden = true;
  notice("");
}

function reset() {
  if (state.worker) state.worker.terminate();
  state.worker = null;
  state.phase = null;
  state.run = emptyRun();
  state.dirty = true;
  $("phase").textContent = "not started";
  $("speed").textContent = "–";
  $("backend").textContent = "backend: not started";
  $("progress-bar").style.width = "0";
  $("latest").replaceChildren();
  $("download").disabled = true;
  $("error").hidden = true;
  notice("");
  setRunning(false);
}

$("play").addEventListener("click", () => {
  if (!state.worker) startWorker();
  setRunning(true);
  state.worker.postMessage({ type: "play" });
});
$("pause").addEventListener("click", () => {
  setRunning(false);
  state.worker?.postMessage({ type: "pause" });
});
$("single").addEventListener("click", () => {
  if (!state.worker) startWorker();
  state.worker.postMessage({ type: "step" });
});
$("reset").addEventListener("click", reset);
$("error-reset").addEventListener("click", reset);
$("download").addEventListener("click", () => state.worker?.postMessage({ type: "snapshot" }));

// ---------- modes and the run viewer ----------
const viewer = createViewer({
  showRun(run) {
    state.run = run;
    state.dirty = true;
  },
});

function setMode(mode) {
  $("train-mode").hidden = mode !== "train";
  $("view-mode").hidden = mode !== "view";
  $("samples-section").hidden = mode !== "train";
  $("mode-train").classList.toggle("active", mode === "train");
  $("mode-view").classList.toggle("active", mode === "view");
  viewer.show(mode === "view");
  if (mode === "view" && state.worker) reset();
}

$("mode-train").addEventListener("click", () => {
  setMode("train");
  viewer.clear();
  state.run = emptyRun();
  state.dirty = true;
});
$("mode-view").addEventListener("click", () => setMode("view"));
for (const id of ["file", "folder"]) {
  $(id).addEventListener("change", (e) => {
    viewer.openFiles(e.target.files);
    e.target.value = ""; // choosing the same files again reloads them
  });
}
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  viewer.openDrop(e.dataTransfer);
});

const runPath = url.searchParams.get("run");
if (runPath) {
  setMode("view");
  viewer.openUrl(runPath);
} else {
  setMode(url.searchParams.get("mode") === "view" ? "view" : "train");
  if (url.searchParams.get("autoplay") === "1") $("play").click();
}
