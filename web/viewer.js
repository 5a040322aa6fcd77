// The run viewer's loading: a run's metrics.jsonl and samples.jsonl from the
// file picker (several files at once), a chosen folder, a drop (files or a
// folder), or `?run=URL` (samples.jsonl looked for beside it). What was read
// is summarised above the charts, its bad lines listed, the metrics drawn as
// charts and the samples shown as a table.

import { emptyRun, parseMetrics } from "./metrics.js";
import { parseSamples, runFileKind, sampleSteps } from "./samples.js";
import { renderSamples } from "./samples-table.js";

const $ = (id) => document.getElementById(id);

/** The files of a run folder that the viewer reads. */
export const RUN_FILES = ["metrics.jsonl", "samples.jsonl"];

/** Extensions of files read when several are given and their names are not RUN_FILES. */
const TEXT_FILE = /\.(jsonl|ndjson|json|txt)$/i;

/**
 * A loaded file: its name, then its text or why it could not be read; `kind`
 * ("metrics" or "samples") when known before reading.
 * @typedef {{name: string, text?: string, error?: string, kind?: string}} Loaded
 */

/** Reads a File. @returns {Promise<Loaded>} */
function readFile(file, name = file.name) {
  return file.text().then(
    (text) => ({ name, text }),
    (e) => ({ name, error: e.message }),
  );
}

/**
 * From a folder's files (each with its `webkitRelativePath`), the run files
 * of the shallowest folder holding one (a folder of runs: the first run);
 * notes name what else was left.
 */
export function pickRunFolder(files) {
  const runFiles = files.filter((f) => RUN_FILES.includes(f.name));
  const folderOf = (f) => (f.webkitRelativePath || f.name).split("/").slice(0, -1).join("/");
  if (runFiles.length === 0) {
    const folder = files.length ? (files[0].webkitRelativePath || "").split("/")[0] : "";
    return { files: [], notes: [`${folder || "the folder"}: no metrics.jsonl or samples.jsonl in it`] };
  }
  const folders = [...new Set(runFiles.map(folderOf))].sort(
    (a, b) => a.split("/").length - b.split("/").length || a.localeCompare(b),
  );
  const notes = folders.length > 1 ? [`${folders.length} folders hold run files; showing ${folders[0]}/`] : [];
  return { files: runFiles.filter((f) => folderOf(f) === folders[0]), notes };
}

/**
 * The files to read from a picked or dropped list: one file is read whatever
 * its name; of several, RUN_FILES and text files (.jsonl, .json, .ndjson,
 * .txt); a folder's by pickRunFolder.
 */
function chooseFiles(files) {
  if (files.some((f) => f.webkitRelativePath)) return pickRunFolder(files);
  if (files.length <= 1) return { files, notes: [] };
  const chosen = files.filter((f) => RUN_FILES.includes(f.name) || TEXT_FILE.test(f.name));
  const notes = files.filter((f) => !chosen.includes(f)).map((f) => `${f.name}: not a metrics or samples file; ignored`);
  return { files: chosen, notes };
}

/** A file of a dropped folder, or null when it has none of that name. */
function fileInFolder(dir, name) {
  return new Promise((resolve) => dir.getFile(name, {}, (entry) => entry.file(resolve, () => resolve(null)), () => resolve(null)));
}

/**
 * What a drop holds: its files, and from a dropped folder its RUN_FILES
 * (through `webkitGetAsEntry`). The entries are taken at once: a
 * DataTransfer is emptied once its event is over.
 */
async function droppedFiles(dataTransfer) {
  const items = [...(dataTransfer.items || [])].filter((item) => item.kind === "file");
  if (items.length === 0) {
    const chosen = chooseFiles([...dataTransfer.files]);
    return { loaded: await Promise.all(chosen.files.map((f) => readFile(f))), notes: chosen.notes };
  }
  const taken = items.map((item) => ({ entry: item.webkitGetAsEntry ? item.webkitGetAsEntry() : null, file: item.getAsFile() }));
  const files = [];
  const loaded = [];
  const notes = [];
  for (const { entry, file } of taken) {
    if (entry && entry.isDirectory) {
      const found = await Promise.all(RUN_FILES.map((name) => fileInFolder(entry, name)));
      found.forEach((f, i) => f && loaded.push(readFile(f, `${entry.name}/${RUN_FILES[i]}`)));
      if (found.every((f) => f === null)) notes.push(`${entry.name}/: no metrics.jsonl or samples.jsonl in it`);
    } else if (file) {
      files.push(file);
    }
  }
  const chosen = chooseFiles(files);
  loaded.push(...chosen.files.map((f) => readFile(f)));
  return { loaded: await Promise.all(loaded), notes: [...notes, ...chosen.notes] };
}

/**
 * The run viewer. `showRun(run)` draws a metrics run (web/metrics.js) as
 * charts; `show(visible)` shows or hides the viewer's Samples section with
 * the mode; `clear()` forgets what was loaded.
 */
export function createViewer({ showRun }) {
  let visible = false;
  let samples = null;
  // Samples without metrics: the empty charts are hidden.
  let chartsHidden = false;

  /** Shows or hides the charts and the Samples section for the mode and what is loaded. */
  function layout() {
    $("charts").hidden = visible && chartsHidden;
    $("run-samples").hidden = !visible || samples === null;
  }

  /** Shows what was loaded: the summary line, the bad lines, the charts and the samples. */
  function display(loaded, notes = []) {
    let run = null;
    samples = null;
    const parts = [];
    const problems = [...notes];
    for (const file of loaded) {
      const kind = file.kind ?? (file.error === undefined ? runFileKind(file.name, file.text) : "metrics");
      if (kind === "samples") {
        if (file.error !== undefined) problems.push(`${file.name}: cannot read (${file.error})`);
        else if (samples) problems.push(`${file.name}: a second samples file; ignored`);
        else {
          samples = parseSamples(file.text, file.name);
          const steps = sampleSteps(samples);
          const plural = (n, what) => `${n} ${what}${n === 1 ? "" : "s"}`;
          parts.push(`${file.name}: ${plural(samples.rows.length, "sample")} at ${plural(steps.length, "evaluation")}`);
          problems.push(...samples.problems);
        }
      } else if (run) {
        problems.push(`${file.name}: a second metrics file; ignored`);
      } else {
        // As the viewer always did: a file that cannot be read is an empty run named with the reason.
        const source = file.error === undefined ? file.name : `${file.name}: ${file.error}`;
        run = parseMetrics(file.text ?? "", source);
        parts.push(`${source}: ${run.train.length} training steps, ${run.eval.length} evaluations, ${run.events.length} events`);
        problems.push(...run.problems);
      }
    }
    chartsHidden = run === null && samples !== null;
    if (chartsHidden) parts.push("no metrics.jsonl, so no charts");
    showRun(run ?? emptyRun());
    $("view-source").textContent = parts.join(" · ");
    $("view-problems").replaceChildren(
      ...problems.map((p) => {
        const li = document.createElement("li");
        li.textContent = p;
        return li;
      }),
    );
    renderSamples(samples);
    layout();
  }

  /** Reads a picked or dropped list of files (or a folder's, from the folder picker) and shows them. */
  async function openFiles(fileList) {
    const { files, notes } = chooseFiles([...fileList]);
    if (files.length === 0 && notes.length === 0) return;
    display(await Promise.all(files.map((f) => readFile(f, f.webkitRelativePath || f.name))), notes);
  }

  /** Reads what was dropped (files, a folder) and shows it; call it within the drop event. */
  async function openDrop(dataTransfer) {
    const { loaded, notes } = await droppedFiles(dataTransfer);
    if (loaded.length || notes.length) display(loaded, notes);
  }

  /**
   * Loads `?run=URL`: the metrics at URL (a URL ending in `/` is a folder:
   * its metrics.jsonl) and samples.jsonl in the same folder, which may be
   * missing (a 404 shows no table and no message).
   */
  async function openUrl(runPath) {
    const metricsPath = runPath.endsWith("/") ? `${runPath}metrics.jsonl` : runPath;
    const metricsUrl = new URL(metricsPath, window.location.href);
    const samplesUrl = new URL("samples.jsonl", metricsUrl);
    const samplesName = metricsPath.split("?")[0].replace(/[^/]*$/, "samples.jsonl");
    const get = (u) => fetch(u).then((r) => (r.ok ? r.text().then((text) => ({ text })) : { status: r.status }), (e) => ({ error: e.message }));
    const sameFile = samplesUrl.href === metricsUrl.href;
    const [metrics, sampled] = await Promise.all([get(metricsUrl), sameFile ? null : get(samplesUrl)]);
    const loaded = [];
    if (metrics.text !== undefined) loaded.push({ name: metricsPath, text: metrics.text });
    else loaded.push({ name: metricsPath, error: `cannot load (${metrics.error ?? `HTTP ${metrics.status}`})`, kind: "metrics" });
    if (sampled && sampled.text !== undefined) loaded.push({ name: samplesName, text: sampled.text, kind: "samples" });
    else if (sampled && sampled.status !== 404) {
      loaded.push({ name: samplesName, error: sampled.error ?? `HTTP ${sampled.status}`, kind: "samples" });
    }
    display(loaded);
  }

  return {
    openFiles,
    openDrop,
    openUrl,
    /** Shows the viewer's own parts (view mode) or hides them (training mode). */
    show(on) {
      visible = on;
      layout();
    },
    /** Forgets the loaded run: no summary, no problems, no samples. */
    clear() {
      samples = null;
      chartsHidden = false;
      $("view-source").textContent = "";
      $("view-problems").replaceChildren();
      renderSamples(null);
      layout();
    },
  };
}
