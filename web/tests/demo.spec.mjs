// End-to-end test of the browser demo in Debian's headless Chromium
// (playwright-core drives /usr/bin/chromium; no browser is downloaded).
//
//   cargo xtask web --no-serve && (cd web/tests && npm ci && npm test)
//
// Starts `cargo xtask web` (the real server, MIME types included), then,
// once with WebGPU (SwiftShader) and once without it:
// - starts a run with the settings of first-step.json and checks the
//   wasm build's first step against the native build's figures there;
// - checks a button click is answered within 200 ms while training;
// - waits for three evaluation points, checks the figures shown are finite
//   and the charts are drawn, and where the top-k statistics ran (on WebGPU:
//   agreeing with the CPU kernel);
// then checks bad settings give a message naming the field and a working
// reset, and loads sample-metrics.jsonl (one malformed line) into the run
// viewer, then with sample-samples.jsonl (2 evaluations × 3 prompts, one
// malformed line): both files picked, samples alone, both dropped, a run
// folder dropped (stand-in entries) and picked, and ?run= (samples.jsonl
// beside it, or absent): the Samples table's rows, steps, summary line and
// wins, and its texts shown as text.
// Screenshots and a summary (timings) go to $DAA_WEB_ARTIFACTS
// (default: target/web-test/).

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const artifacts = resolve(process.env.DAA_WEB_ARTIFACTS || join(root, "target/web-test"));
mkdirSync(artifacts, { recursive: true });
const pinned = JSON.parse(readFileSync(join(here, "first-step.json"), "utf8"));
const port = 18000 + Math.floor(Math.random() * 2000);
const base = `http://127.0.0.1:${port}/`;
const TIMEOUT_MS = Number(process.env.DAA_WEB_TIMEOUT_MS || 600_000);

const failures = [];
function check(condition, message) {
  if (!condition) failures.push(message);
  console.log(`${condition ? "ok  " : "FAIL"} ${message}`);
}

function startServer() {
  return new Promise((resolveServer, reject) => {
    const server = spawn("cargo", ["xtask", "web", "--port", String(port)], {
      cwd: root,
      stdio: ["ignore", "pipe", "inherit"],
      detached: true,
    });
    const timer = setTimeout(() => reject(new Error("cargo xtask web did not start serving in time")), TIMEOUT_MS);
    server.stdout.on("data", (chunk) => {
      process.stdout.write(chunk);
      if (String(chunk).includes("serving")) {
        clearTimeout(timer);
        resolveServer(server);
      }
    });
    server.on("exit", (code) => reject(new Error(`cargo xtask web exited (${code})`)));
  });
}

function settingsQuery(settings) {
  const q = new URLSearchParams();
  const t = settings.testbed || {};
  const map = {
    hidden: t.hidden_size, layers: t.layers, sft_prompts: t.sft_prompts, sft_steps: t.sft_steps,
    sft_batch: t.sft_batch, pairs: t.pairs, eval_pairs: t.eval_pairs, batch: settings.batch_size,
    steps: settings.steps, eval_every: settings.eval_every, samples: settings.sample_prompts, lr: settings.lr,
  };
  for (const [k, v] of Object.entries(map)) if (v !== undefined) q.set(k, String(v));
  return q;
}

async function launch(webgpu) {
  const profile = mkdtempSync(join(tmpdir(), "daa-chromium-"));
  const args = webgpu
    ? ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-angle=swiftshader"]
    : ["--disable-features=WebGPU", "--use-angle=swiftshader"];
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.DAA_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args,
    viewport: { width: 1280, height: 1400 },
  });
  return { context, profile };
}

/** Painted non-white pixels in the plotting area of each chart. */
async function chartInk(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#charts canvas")].map((c) => {
      const ctx = c.getContext("2d");
      const top = Math.round(30 * (window.devicePixelRatio || 1));
      const data = ctx.getImageData(0, top, c.width, c.height - top).data;
      let ink = 0;
      // A canvas not yet painted is transparent: no ink.
      for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240)) ink++;
      return { id: c.id, ink };
    }),
  );
}

/** `chartInk` once every chart has ink, or after `timeoutMs` (a chart is
 * drawn on the next animation frame after its data arrives: a fixed wait
 * missed it once on a loaded machine). */
async function drawnCharts(page, timeoutMs = 5000) {
  const until = Date.now() + timeoutMs;
  let ink = await chartInk(page);
  while (Date.now() < until && (ink.length === 0 || ink.some((c) => c.ink <= 400))) {
    await page.waitForTimeout(100);
    ink = await chartInk(page);
  }
  return ink;
}

async function trainRun(webgpu, summary) {
  const name = webgpu ? "webgpu" : "cpu";
  console.log(`\n== training in the page (${name})`);
  const { context, profile } = await launch(webgpu);
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const q = settingsQuery(pinned.settings);
  q.set("autoplay", "1");
  // Keep WebGPU after the first evaluation's timing (on SwiftShader the CPU
  // is faster, and "auto" would switch), so the WGSL kernel runs every time.
  if (webgpu) q.set("stats", "webgpu");
  const opened = Date.now();
  await page.goto(`${base}?${q}`);
  const hasGpu = await page.evaluate(async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter())));
  check(hasGpu === webgpu, `${name}: navigator.gpu adapter ${hasGpu ? "present" : "absent"} as launched`);

  // The first step against the native build's (after 10 SFT steps, the
  // sampled pairs and their reference scores, all computed in wasm).
  await page.waitForFunction(() => window.daaDemo.run.train.length >= 1, null, { timeout: TIMEOUT_MS, polling: 100 });
  const [first] = await page.evaluate(() => window.daaDemo.run.train.slice(0, 1));
  const rel = pinned.relative_tolerance;
  for (const [label, got, want] of [
    ["first step's gradient norm", first.grad_norm, pinned.grad_norm],
    ["first step's chosen log-probability", first["logps/chosen"], pinned.logps_chosen],
    ["first step's rejected log-probability", first["logps/rejected"], pinned.logps_rejected],
    ["first step's tokens", first.tokens, pinned.tokens],
  ]) {
    check(Math.abs(got - want) <= rel * Math.abs(want), `${name}: ${label} ${got} = native ${want} (relative ${rel})`);
  }

  // Responsiveness: while the worker trains, a click on Pause is answered
  // (the page's own handler ran and the state shows it) within 200 ms,
  // measured from here (the round trip through the page's event loop): the
  // median of five pauses, as one round trip on a 2-core machine shared with
  // SwiftShader's threads can stall (measured: 53 to 242 ms for one click).
  const answers = [];
  for (let i = 0; i < 5; i++) {
    await page.waitForFunction(() => window.daaDemo.running, null, { timeout: 10_000 });
    await page.waitForTimeout(300);
    const clicked = Date.now();
    await page.evaluate(() => document.getElementById("pause").click());
    await page.waitForFunction(() => document.getElementById("run-state").textContent === "paused", null, { polling: 10 });
    answers.push(Date.now() - clicked);
    await page.evaluate(() => document.getElementById("play").click());
  }
  const answerMs = [...answers].sort((a, b) => a - b)[2];
  check(answerMs < 200, `${name}: Pause answered in ${answerMs} ms while training (median of ${answers.join(", ")} ms; < 200 ms)`);
  const longTasks = await page.evaluate(() => window.daaDemo.longTasks);

  await page.waitForFunction(() => window.daaDemo.run.eval.length >= 3, null, { timeout: TIMEOUT_MS, polling: 250 });
  const demo = await page.evaluate(() => ({
    evals: window.daaDemo.run.eval.length,
    firstEvalMs: window.daaDemo.firstEvalMs,
    lastStats: window.daaDemo.lastStats,
    statsCheck: window.daaDemo.statsCheck,
    statsChoice: window.daaDemo.statsChoice,
    backend: window.daaDemo.backend,
    speed: document.getElementById("speed").textContent,
    figures: [...document.querySelectorAll("#latest [data-figure]")].map((s) => [s.dataset.figure, s.querySelector("b").textContent]),
    notice: document.getElementById("notice").hidden ? "" : document.getElementById("notice").textContent,
    samples: document.querySelectorAll("#samples tbody tr").length,
  }));
  const numeric = demo.figures.filter(([k]) => !k.endsWith("turned"));
  check(numeric.length >= 8, `${name}: ${numeric.length} figures shown`);
  for (const [k, v] of numeric) check(Number.isFinite(Number(v)), `${name}: figure ${k} = ${v} is finite`);
  const ink = await chartInk(page);
  for (const c of ink) check(c.ink > 400, `${name}: chart ${c.id} is drawn (${c.ink} non-white pixels)`);
  check(demo.samples >= 1, `${name}: ${demo.samples} side-by-side samples shown`);
  if (webgpu) {
    check(demo.lastStats.backend === "webgpu", `${name}: top-k statistics ran on ${demo.lastStats.backend}`);
    check(demo.statsCheck !== undefined && demo.statsCheck < 1e-4, `${name}: WebGPU statistics = CPU's within 1e-4 (largest difference ${demo.statsCheck})`);
  } else {
    check(demo.lastStats.backend === "cpu", `${name}: top-k statistics ran on ${demo.lastStats.backend}`);
    check(/No WebGPU/.test(demo.notice), `${name}: the page says there is no WebGPU ("${demo.notice}")`);
  }
  check(errors.length === 0, `${name}: no page errors ${errors.join("; ")}`);
  // Steps per second once training runs (setup excluded).
  await page.waitForTimeout(3000);
  const speed = await page.evaluate(() => document.getElementById("speed").textContent);
  await page.screenshot({ path: join(artifacts, `train-${name}.png`), fullPage: true });
  summary[name] = { firstEvalSeconds: demo.firstEvalMs / 1000, speed, backend: demo.backend, statsMs: demo.lastStats.ms, statsCheck: demo.statsCheck, pageOpenToThreeEvalsSeconds: (Date.now() - opened) / 1000, pauseAnswerMs: answerMs, longTasks, statsChoice: demo.statsChoice };
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

async function workerFailure() {
  console.log("\n== a run that cannot start");
  const { context, profile } = await launch(false);
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(`${base}?hidden=12&autoplay=1`);
  await page.waitForFunction(() => !document.getElementById("error").hidden, null, { timeout: 60_000 });
  const text = await page.evaluate(() => document.getElementById("error-text").textContent);
  check(/hidden_size/.test(text), `bad settings: the page names the field ("${text}")`);
  await page.click("#error-reset");
  const after = await page.evaluate(() => ({
    errorHidden: document.getElementById("error").hidden,
    state: document.getElementById("run-state").textContent,
    play: !document.getElementById("play").disabled,
  }));
  check(after.errorHidden && after.state === "idle" && after.play, `bad settings: reset clears the error (${JSON.stringify(after)})`);
  await page.screenshot({ path: join(artifacts, "error.png") });
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

/** What the run viewer shows: its summary line, the problems, the Samples section. */
function viewerState(page) {
  return page.evaluate(() => {
    const table = document.getElementById("run-samples-table");
    const select = document.getElementById("run-samples-step");
    return {
      source: document.getElementById("view-source").textContent,
      problems: [...document.querySelectorAll("#view-problems li")].map((li) => li.textContent),
      chartsHidden: document.getElementById("charts").hidden,
      samplesHidden: document.getElementById("run-samples").hidden,
      steps: [...select.options].map((o) => o.textContent),
      step: select.selectedOptions[0]?.textContent ?? null,
      summary: document.getElementById("run-samples-summary").textContent,
      rows: [...table.tBodies[0].rows].map((tr) => ({
        win: tr.classList.contains("win"),
        cells: [...tr.cells].map((td) => td.textContent),
      })),
      elements: table.tBodies[0].querySelectorAll("img, b, script").length,
      injected: window.injected ?? null,
    };
  });
}

/** Runs `load` (which makes the viewer read something), then waits until the viewer shows a summary that matches `until`. */
async function viewerLoad(page, load, until) {
  await page.evaluate(() => (document.getElementById("view-source").textContent = ""));
  await load();
  await page.waitForFunction((re) => new RegExp(re).test(document.getElementById("view-source").textContent), until.source, { timeout: 10_000 });
  return viewerState(page);
}

// The Samples table of sample-samples.jsonl: at step 64 (the default, the
// last) rewards 0.75, 0.5, 0.1 against the reference's 0.25, 0.1, 0.3 (mean
// 1.35 / 3 = 0.450 against 0.65 / 3 = 0.217; the first two win), KL 1.5, 2.5
// and null (mean 2.00 over the 2 known); at step 0 rewards 0.25, −0.5, 0.4
// (mean 0.050; only the third wins: 0.25 ties), KL 0 each.
const SAMPLES_AT_64 = "step 64: 3 samples · mean reward 0.450 vs reference 0.217 · policy wins 2 of 3 (67%) · mean KL 2.00 (2 of 3 known)";
const SAMPLES_AT_0 = "step 0: 3 samples · mean reward 0.050 vs reference 0.217 · policy wins 1 of 3 (33%) · mean KL 0.00";
const SAMPLES_BAD_LINE = /^sample-samples\.jsonl: line 7: not JSON/;

/** Checks the Samples section shows sample-samples.jsonl's last evaluation. */
function checkSamplesAt64(label, shown) {
  check(!shown.samplesHidden, `${label}: the Samples section is shown`);
  check(shown.steps.join(",") === "step 0,step 64" && shown.step === "step 64", `${label}: steps ${shown.steps.join(", ")}, ${shown.step} chosen`);
  check(shown.rows.length === 3, `${label}: ${shown.rows.length} rows at the last step (3)`);
  check(shown.summary === SAMPLES_AT_64, `${label}: summary "${shown.summary}"`);
  const wins = shown.rows.map((r) => (r.win && r.cells[6] === "✓" ? "win" : r.cells[6] === "" ? "-" : "?")).join(" ");
  check(wins === "win win -", `${label}: policy wins marked on rows 0 and 1 (${wins})`);
}

async function viewer(summary) {
  console.log("\n== the run viewer");
  const { context, profile } = await launch(false);
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${base}?mode=view`);
  const metricsFile = join(here, "sample-metrics.jsonl");
  const samplesFile = join(here, "sample-samples.jsonl");
  await page.setInputFiles("#file", metricsFile);
  await page.waitForFunction(() => document.getElementById("view-source").textContent.includes("evaluations"));
  const shown = await viewerState(page);
  check(shown.problems.length === 1 && /line 11: not JSON/.test(shown.problems[0]), `viewer: names the malformed line (${shown.problems.join(" | ")})`);
  check(/9 evaluations/.test(shown.source) && /1 events/.test(shown.source), `viewer: ${shown.source}`);
  check(shown.samplesHidden && !shown.chartsHidden, "viewer, metrics only: charts, no Samples section");
  const ink = await drawnCharts(page);
  for (const c of ink) check(c.ink > 400, `viewer: chart ${c.id} is drawn (${c.ink} non-white pixels)`);

  // Both files at once (recognised by their content: neither has its run name).
  const both = await viewerLoad(page, () => page.setInputFiles("#file", [metricsFile, samplesFile]), { source: "samples at" });
  check(/9 evaluations/.test(both.source) && /6 samples at 2 evaluations/.test(both.source), `viewer, both files: ${both.source}`);
  check(
    both.problems.length === 2 && /line 11: not JSON/.test(both.problems[0]) && SAMPLES_BAD_LINE.test(both.problems[1]),
    `viewer, both files: names each malformed line (${both.problems.join(" | ")})`,
  );
  checkSamplesAt64("viewer, both files", both);
  const html = both.rows[2]?.cells[2];
  check(html === '<img src=x onerror="window.injected=1">' && both.elements === 0 && both.injected === null, `viewer: a completion's markup is shown as text (${html})`);
  for (const c of await drawnCharts(page)) check(c.ink > 400, `viewer, both files: chart ${c.id} is drawn (${c.ink} non-white pixels)`);
  await page.screenshot({ path: join(artifacts, "viewer-samples.png"), fullPage: true });
  await page.selectOption("#run-samples-step", { label: "step 0" });
  const at0 = await viewerState(page);
  const completions = at0.rows.map((r) => r.cells[2]);
  check(at0.rows.length === 3 && completions[0] === "fickle" && completions[2] === "oak", `viewer: step 0 shows its own rows (${completions.map((c) => c.slice(0, 12)).join(", ")})`);
  check(at0.summary === SAMPLES_AT_0, `viewer: step 0 summary "${at0.summary}"`);
  check(at0.rows.filter((r) => r.win).length === 1 && at0.rows[2].win, "viewer: step 0 marks one win (row 2; row 0 ties)");

  // samples.jsonl alone: the table, no charts.
  const alone = await viewerLoad(page, () => page.setInputFiles("#file", samplesFile), { source: "no metrics" });
  check(alone.chartsHidden && alone.rows.length === 3 && !alone.samplesHidden, `viewer, samples only: table, charts hidden (${alone.source})`);
  check(alone.problems.length === 1 && SAMPLES_BAD_LINE.test(alone.problems[0]), `viewer, samples only: ${alone.problems.join(" | ")}`);

  // Two files dropped (a DataTransfer made in the page).
  const texts = [readFileSync(metricsFile, "utf8"), readFileSync(samplesFile, "utf8")];
  const dropped = await viewerLoad(
    page,
    () =>
      page.evaluate(([metrics, samples]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([metrics], "metrics.jsonl"));
        dt.items.add(new File([samples], "samples.jsonl"));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
      }, texts),
    { source: "samples at" },
  );
  check(/^metrics\.jsonl: .*9 evaluations/.test(dropped.source) && !dropped.chartsHidden, `viewer, dropped files: ${dropped.source}`);
  checkSamplesAt64("viewer, dropped files", dropped);
  // A dropped folder, through a stand-in for Chromium's file-system entries
  // (webkitGetAsEntry: a directory entry's getFile, a file entry's file), as
  // a page cannot make real ones.
  const droppedFolder = await viewerLoad(
    page,
    () =>
      page.evaluate(([metrics, samples]) => {
        const fileEntry = (name, text) => ({ isFile: true, isDirectory: false, name, file: (ok) => ok(new File([text], name)) });
        const inside = { "metrics.jsonl": fileEntry("metrics.jsonl", metrics), "samples.jsonl": fileEntry("samples.jsonl", samples) };
        const folder = {
          isFile: false,
          isDirectory: true,
          name: "run-7",
          getFile: (name, _options, ok, fail) => (inside[name] ? ok(inside[name]) : fail(new DOMException(name, "NotFoundError"))),
        };
        const transfer = { items: [{ kind: "file", webkitGetAsEntry: () => folder, getAsFile: () => null }], files: [] };
        const drop = new Event("drop", { cancelable: true });
        Object.defineProperty(drop, "dataTransfer", { value: transfer });
        document.getElementById("drop").dispatchEvent(drop);
      }, texts),
    { source: "samples at" },
  );
  check(/^run-7\/metrics\.jsonl: .*9 evaluations.* · run-7\/samples\.jsonl: 6 samples/.test(droppedFolder.source), `viewer, dropped folder: ${droppedFolder.source}`);
  checkSamplesAt64("viewer, dropped folder", droppedFolder);

  // A run folder (the folder picker, and ?run= beside the server's files),
  // holding other files the viewer leaves alone.
  mkdirSync(join(root, "target"), { recursive: true });
  const runDir = mkdtempSync(join(root, "target", "web-test-run-"));
  try {
    writeFileSync(join(runDir, "metrics.jsonl"), texts[0]);
    writeFileSync(join(runDir, "samples.jsonl"), texts[1]);
    writeFileSync(join(runDir, "config.json"), "{}");
    const folder = await viewerLoad(page, () => page.setInputFiles("#folder", runDir), { source: "samples at" });
    check(/metrics\.jsonl: .*9 evaluations/.test(folder.source) && !/config/.test(folder.source + folder.problems.join()), `viewer, run folder: ${folder.source}`);
    checkSamplesAt64("viewer, run folder", folder);
    const served = `/files/target/${runDir.split(/[\\/]/).pop()}/metrics.jsonl`;
    await page.goto(`${base}?run=${served}`);
    await page.waitForFunction(() => /samples at/.test(document.getElementById("view-source").textContent));
    const fromFolderUrl = await viewerState(page);
    check(/9 evaluations/.test(fromFolderUrl.source), `viewer ?run= with samples.jsonl beside it: ${fromFolderUrl.source}`);
    checkSamplesAt64("viewer ?run= with samples.jsonl", fromFolderUrl);
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }

  // ?run=PATH served by cargo xtask web; no samples.jsonl beside it (a 404: no table, no message).
  await page.goto(`${base}?run=/files/web/tests/sample-metrics.jsonl`);
  await page.waitForFunction(() => document.getElementById("view-source").textContent.includes("evaluations"));
  const fromUrl = await viewerState(page);
  check(/9 evaluations/.test(fromUrl.source), `viewer ?run=: ${fromUrl.source}`);
  check(fromUrl.samplesHidden && fromUrl.problems.length === 1, `viewer ?run= without samples.jsonl: no table, no message (${fromUrl.problems.join(" | ")})`);
  await page.screenshot({ path: join(artifacts, "viewer.png"), fullPage: true });
  check(errors.length === 0, `viewer: no page errors ${errors.join("; ")}`);
  summary.viewer = { source: shown.source, problems: shown.problems, samples: both.source, samplesProblems: both.problems };
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

const summary = {};
const wasm = join(root, "web/pkg/daa_wasm_bg.wasm");
const server = await startServer();
try {
  const bytes = readFileSync(wasm);
  summary.wasm = { bytes: statSync(wasm).size, gzipBytes: gzipSync(bytes, { level: 9 }).length };
  console.log(`wasm: ${(summary.wasm.bytes / 1e6).toFixed(2)} MB, ${(summary.wasm.gzipBytes / 1e6).toFixed(2)} MB gzip`);
  await trainRun(true, summary);
  await trainRun(false, summary);
  await workerFailure();
  await viewer(summary);
} catch (e) {
  failures.push(String(e && e.stack ? e.stack : e));
  console.error(e);
} finally {
  try {
    process.kill(-server.pid); // cargo and the xtask it started
  } catch {
    server.kill();
  }
}
writeFileSync(join(artifacts, "summary.json"), JSON.stringify(summary, null, 2));
console.log(`\nsummary: ${JSON.stringify(summary, null, 2)}\nscreenshots: ${artifacts}`);
if (failures.length) {
  console.error(`\n${failures.length} check(s) failed:\n- ${failures.join("\n- ")}`);
  process.exit(1);
}
console.log("every browser check passed");
