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
// viewer.
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

/** Non-white pixels in the plotting area of each chart, and the points drawn. */
async function chartInk(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#charts canvas")].map((c) => {
      const ctx = c.getContext("2d");
      const top = Math.round(30 * (window.devicePixelRatio || 1));
      const data = ctx.getImageData(0, top, c.width, c.height - top).data;
      let ink = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240) ink++;
      return { id: c.id, ink };
    }),
  );
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
  // measured from here (the round trip through the page's event loop).
  await page.waitForFunction(() => window.daaDemo.running, null, { timeout: 10_000 });
  await page.waitForTimeout(500);
  const clicked = Date.now();
  await page.evaluate(() => document.getElementById("pause").click());
  await page.waitForFunction(() => document.getElementById("run-state").textContent === "paused", null, { polling: 10 });
  const answerMs = Date.now() - clicked;
  check(answerMs < 200, `${name}: Pause answered in ${answerMs} ms while training (< 200 ms)`);
  const longTasks = await page.evaluate(() => window.daaDemo.longTasks);
  await page.evaluate(() => document.getElementById("play").click());

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

async function viewer(summary) {
  console.log("\n== the run viewer");
  const { context, profile } = await launch(false);
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(`${base}?mode=view`);
  await page.setInputFiles("#file", join(here, "sample-metrics.jsonl"));
  await page.waitForFunction(() => document.getElementById("view-source").textContent.includes("evaluations"));
  const shown = await page.evaluate(() => ({
    source: document.getElementById("view-source").textContent,
    problems: [...document.querySelectorAll("#view-problems li")].map((li) => li.textContent),
  }));
  check(shown.problems.length === 1 && /line 11: not JSON/.test(shown.problems[0]), `viewer: names the malformed line (${shown.problems.join(" | ")})`);
  check(/9 evaluations/.test(shown.source) && /1 events/.test(shown.source), `viewer: ${shown.source}`);
  await page.waitForTimeout(300);
  const ink = await chartInk(page);
  for (const c of ink) check(c.ink > 400, `viewer: chart ${c.id} is drawn (${c.ink} non-white pixels)`);
  // ?run=PATH served by cargo xtask web.
  await page.goto(`${base}?run=/files/web/tests/sample-metrics.jsonl`);
  await page.waitForFunction(() => document.getElementById("view-source").textContent.includes("evaluations"));
  const fromUrl = await page.evaluate(() => document.getElementById("view-source").textContent);
  check(/9 evaluations/.test(fromUrl), `viewer ?run=: ${fromUrl}`);
  await page.screenshot({ path: join(artifacts, "viewer.png"), fullPage: true });
  summary.viewer = { source: shown.source, problems: shown.problems };
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
