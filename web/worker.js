// The training loop, off the page's thread. The page sends
//   {type: "start", settings, webgpu, stats}   create a run (WebGPU for the statistics when asked and
//                                       present; stats "auto" keeps the faster of WebGPU and the CPU,
//                                       "webgpu" keeps WebGPU)
//   {type: "play"} / {type: "pause"}    run continuously / stop after the current piece of work
//   {type: "step"}                      one piece of work (an evaluation first when one is due)
//   {type: "sample", n}                 reference vs policy samples for n prompts
//   {type: "snapshot"}                  the run as metrics.jsonl
// and hears
//   {type: "ready", backend, gpu}       {type: "progress", progress, train: [...], stepsPerSecond}
//   {type: "eval", point}               {type: "samples", rows}     {type: "snapshot", snapshot}
//   {type: "state", running, phase}     {type: "error", message}

import init, { Demo } from "./pkg/daa_wasm.js";

const SLICE_MS = 60;
const SAMPLE_PROMPTS = 4;

let demo = null;
let running = false;
let loop = null;
const rate = { steps: [], times: [] };

function post(message) {
  self.postMessage(message);
}

function fail(error) {
  running = false;
  post({ type: "error", message: String(error && error.message ? error.message : error) });
}

function stepsPerSecond(step) {
  const now = performance.now();
  rate.steps.push(step);
  rate.times.push(now);
  while (rate.times.length > 2 && now - rate.times[0] > 5000) {
    rate.steps.shift();
    rate.times.shift();
  }
  const span = (rate.times[rate.times.length - 1] - rate.times[0]) / 1000;
  return span > 0 ? (rate.steps[rate.steps.length - 1] - rate.steps[0]) / span : 0;
}

async function evaluate() {
  const point = await demo.evaluate();
  post({ type: "eval", point, backend: demo.backend() });
  post({ type: "samples", rows: demo.sample(SAMPLE_PROMPTS) });
}

/** Work for about SLICE_MS (or one piece), then report. */
async function slice(once) {
  const started = performance.now();
  const train = [];
  let progress = null;
  do {
    if (demo.phase() === "done") break;
    if (demo.evalDue()) {
      await evaluate();
      if (once) break;
      continue;
    }
    progress = demo.step();
    if (progress.train) train.push(progress.train);
  } while (!once && performance.now() - started < SLICE_MS);
  if (progress) {
    const sps = progress.train ? stepsPerSecond(progress.train.step) : 0;
    post({ type: "progress", progress, train, stepsPerSecond: sps });
  }
  if (demo.phase() === "done" && demo.evalDue()) await evaluate();
}

// At most one loop runs: "play" while a paused loop is still finishing its
// slice lets that loop go on instead of starting a second one.
async function run() {
  while (running && demo && demo.phase() !== "done") {
    await slice(false);
    // Let messages (pause, sample, snapshot) in.
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  running = false;
  post({ type: "state", running, phase: demo ? demo.phase() : null });
}

async function start(settings, webgpu, stats) {
  await init();
  demo = new Demo(JSON.stringify(settings));
  demo.setStatsPolicy(stats === "webgpu" ? "webgpu" : "auto");
  let gpu = null;
  let gpuProblem = null;
  if (!webgpu) {
    gpuProblem = "WebGPU was turned off (webgpu=0)";
  } else if (!(self.navigator && self.navigator.gpu)) {
    gpuProblem = "this browser has no WebGPU";
  } else {
    try {
      gpu = await demo.useWebGpu();
    } catch (e) {
      console.warn("WebGPU:", e.message || e);
      gpuProblem = "the browser offers no usable WebGPU adapter";
    }
  }
  post({ type: "ready", backend: demo.backend(), gpu, gpuProblem });
}

async function handle(m) {
  try {
    switch (m.type) {
      case "start":
        await start(m.settings, m.webgpu, m.stats);
        break;
      case "play":
        if (!demo || running) break;
        running = true;
        post({ type: "state", running, phase: demo.phase() });
        if (!loop) {
          loop = run()
            .catch(fail)
            .finally(() => {
              loop = null;
            });
        }
        break;
      case "pause":
        running = false;
        break;
      case "step":
        if (demo && !running && !loop) {
          await slice(true);
          post({ type: "state", running, phase: demo.phase() });
        }
        break;
      case "sample":
        if (demo && demo.phase() !== "sft" && demo.phase() !== "pairs") {
          post({ type: "samples", rows: demo.sample(m.n || SAMPLE_PROMPTS) });
        }
        break;
      case "snapshot":
        if (demo) post({ type: "snapshot", snapshot: demo.snapshot() });
        break;
      default:
        break;
    }
  } catch (e) {
    fail(e);
  }
}

// Messages are handled in order: "play" right after "start" waits for the
// wasm to load. (A running loop does not hold the queue.)
let queue = Promise.resolve();
self.onmessage = (event) => {
  queue = queue.then(() => handle(event.data));
};

self.onerror = (e) => fail(e.message || e);
self.onunhandledrejection = (e) => fail(e.reason);
