// The labelling page (paper appendix A, Figure 8): one point at a time, f = object, j = background.
"use strict";

const PURPLE = "#a020f0";
const GREEN = "#00d000";
const SPOT_BOX = 28; // side of the green box around the point in the context view (display px)

let task = null; // the server's current /api/next answer
let shownAt = null; // performance.now() when both views of the point were on screen
let busy = false; // a request is in flight: ignore keys, so a point is never answered twice

async function show(next) {
  task = next;
  shownAt = null;
  document.body.dataset.point = "";
  if (next.done) return showDone(next);
  const object = next.object, point = next.point;
  $("category").textContent = `category: ${object.category}`;
  await Promise.all([
    setImage($("context-img"), object.context_url, object.context),
    setImage($("zoom-img"), point.zoom_url, point.zoom),
  ]);

  // Context view: box, purple point, green box around it (it can be tiny on a large object).
  const context = $("context-svg");
  resetSvg(context, object.context);
  drawBox(context, object);
  const [cx, cy] = toView(point.xy, object.context);
  context.appendChild(svgElement("rect", { x: cx - SPOT_BOX / 2, y: cy - SPOT_BOX / 2, width: SPOT_BOX,
    height: SPOT_BOX, fill: "none", stroke: GREEN, "stroke-width": 2.5 }));
  context.appendChild(svgElement("circle", { cx, cy, r: 4.5, fill: PURPLE, stroke: "white", "stroke-width": 1.5 }));

  // Zoom view: the point is its centre; a ring leaves the pixel under it visible.
  const zoom = $("zoom-svg");
  resetSvg(zoom, point.zoom);
  const [zx, zy] = toView(point.xy, point.zoom);
  zoom.appendChild(svgElement("circle", { cx: zx, cy: zy, r: 9, fill: "none", stroke: PURPLE, "stroke-width": 3 }));
  zoom.appendChild(svgElement("circle", { cx: zx, cy: zy, r: 2, fill: PURPLE }));

  showProgress(next);
  document.body.dataset.point = `${object.ann_id}:${point.index}`;
  shownAt = performance.now();
}

function showProgress(next) {
  const p = next.progress;
  const parts = [];
  if (!next.done) {
    parts.push(`object ${next.object.index + 1} of ${next.object.num_objects}`);
    parts.push(`point ${next.point.index + 1} of ${next.object.num_points}`);
  }
  parts.push(`${p.labelled_points} of ${p.total_points} points labelled`);
  parts.push(p.labels_per_minute === null ? "? labels/min" : `${p.labels_per_minute.toFixed(1)} labels/min`);
  parts.push(`${formatDuration(p.seconds_left)} left at this pace`);
  $("progress").textContent = parts.join(" · ");
}

function showDone(next) {
  $("task").hidden = true;
  const done = $("done");
  done.hidden = false;
  done.textContent = `All objects are done: labels are in ${next.output}. ` +
    "Review them on the review page, or press u to undo the last answer.";
  showProgress(next);
  document.body.dataset.point = "done";
}

// Send an action; on a refusal (e.g. another tab answered first) say why and show the
// point the server says is next.
async function act(path, body) {
  busy = true;
  const answer = await api("POST", path, body);
  $("message").textContent = answer.ok ? "" : answer.data.error;
  const next = answer.data.next;
  if (next) {
    $("task").hidden = false;
    $("done").hidden = true;
    await show(next);
  }
  busy = false;
}

function label(value) {
  if (busy || !task || task.done || shownAt === null) return;
  const ms = performance.now() - shownAt;
  act("/api/label", { ann_id: task.object.ann_id, point_index: task.point.index, label: value, ms });
}

function undo() {
  if (!busy) act("/api/undo", {});
}

function skip() {
  if (busy || !task || task.done) return;
  act("/api/skip", { ann_id: task.object.ann_id });
}

document.addEventListener("keydown", (event) => {
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "f") label(1);
  else if (key === "j") label(0);
  else if (key === "u" || key === "backspace") { event.preventDefault(); undo(); }
  else if (key === "s") skip();
});
$("btn-object").addEventListener("click", () => label(1));
$("btn-background").addEventListener("click", () => label(0));
$("btn-undo").addEventListener("click", undo);
$("btn-skip").addEventListener("click", skip);

(async () => {
  const answer = await api("GET", "/api/next");
  if (answer.ok) await show(answer.data);
  else $("message").textContent = answer.data.error;
})();
