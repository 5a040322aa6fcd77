// Line charts on a <canvas>: axes with round ticks, one line per series,
// a dashed reference line, and turning points (a dashed vertical line at
// the smoothed peak, a dot where the turn was confirmed).

import { seriesPoints, turningPoints } from "./metrics.js";

function niceTicks(min, max, count) {
  if (!(max > min)) {
    const pad = Math.abs(min) * 0.05 || 0.5;
    return niceTicks(min - pad, max + pad, count);
  }
  const raw = (max - min) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const start = Math.floor(min / step) * step;
  const ticks = [Number(start.toPrecision(12))];
  // Up to the first tick at or beyond `max`, so no point falls outside.
  while (ticks[ticks.length - 1] < max - step * 1e-9) ticks.push(Number((start + ticks.length * step).toPrecision(12)));
  return { ticks, lo: ticks[0], hi: ticks[ticks.length - 1] };
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return Number(v.toPrecision(4)).toString();
}

/** Draws `chart` (see metrics.js CHARTS) for `run` on `canvas`. Returns the number of points drawn. */
export function drawChart(canvas, chart, run) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 360;
  const height = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  const lines = chart.series.map((s) => ({ s, points: seriesPoints(run, s) })).filter((l) => l.points.length);
  const all = lines.flatMap((l) => l.points);
  ctx.fillStyle = "#222";
  ctx.fillText(chart.title, 8, 14);
  if (all.length === 0) {
    ctx.fillStyle = "#888";
    ctx.fillText("waiting for data…", 8, height / 2);
    return 0;
  }
  const margin = { left: 52, right: 10, top: 24, bottom: 30 };
  const xs = all.map((p) => p[0]);
  let ys = all.map((p) => p[1]);
  if (chart.reference !== undefined) ys = ys.concat([chart.reference]);
  const xt = niceTicks(Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1), 5);
  const yt = niceTicks(Math.min(...ys), Math.max(...ys), 4);
  const px = (x) => margin.left + ((x - xt.lo) / (xt.hi - xt.lo || 1)) * (width - margin.left - margin.right);
  const py = (y) => height - margin.bottom - ((y - yt.lo) / (yt.hi - yt.lo || 1)) * (height - margin.top - margin.bottom);
  ctx.strokeStyle = "#e6e6e6";
  ctx.fillStyle = "#555";
  ctx.lineWidth = 1;
  for (const t of yt.ticks) {
    ctx.beginPath();
    ctx.moveTo(margin.left, py(t));
    ctx.lineTo(width - margin.right, py(t));
    ctx.stroke();
    ctx.fillText(label(t), 4, py(t) + 4);
  }
  for (const t of xt.ticks) {
    ctx.fillText(label(t), px(t) - 8, height - margin.bottom + 14);
  }
  ctx.fillText("step", width - margin.right - 26, height - 4);
  if (chart.reference !== undefined) {
    ctx.setLineDash([4, 4]);
    ctx.strokeStyle = "#999";
    ctx.beginPath();
    ctx.moveTo(margin.left, py(chart.reference));
    ctx.lineTo(width - margin.right, py(chart.reference));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  if (chart.turning) {
    for (const t of turningPoints(run, chart.turning)) {
      ctx.strokeStyle = "#d6604d";
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(px(t.peak_step), margin.top);
      ctx.lineTo(px(t.peak_step), height - margin.bottom);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#d6604d";
      ctx.fillText(`turned (peak ${t.peak_step})`, Math.min(px(t.peak_step) + 3, width - 110), margin.top + 10);
    }
  }
  let legend = margin.left + 4;
  for (const { s, points } of lines) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.8;
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    if (points.length < 40) {
      ctx.fillStyle = s.color;
      for (const [x, y] of points) ctx.fillRect(px(x) - 2, py(y) - 2, 4, 4);
    }
    ctx.fillStyle = s.color;
    ctx.fillText(s.label, legend, height - 4);
    legend += ctx.measureText(s.label).width + 14;
  }
  if (chart.turning) {
    for (const t of turningPoints(run, chart.turning)) {
      const series = lines[0];
      const at = series && series.points.find((p) => p[0] === t.step);
      if (at) {
        ctx.fillStyle = "#d6604d";
        ctx.beginPath();
        ctx.arc(px(at[0]), py(at[1]), 4, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }
  return all.length;
}
