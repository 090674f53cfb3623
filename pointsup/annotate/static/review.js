// The review page: one object with all its labelled points; click a point to flip its label.
"use strict";

const COLOURS = { 1: "#e8202a", 0: "#2a6bff" }; // object red, background blue (as pointsup.utils.visualize)

let object = null;

function draw(next) {
  object = next;
  const svg = $("review-svg");
  resetSvg(svg, object.context);
  drawBox(svg, object);
  let numObject = 0, numBackground = 0;
  for (const point of object.points) {
    if (point.label === null) continue;
    point.label === 1 ? numObject++ : numBackground++;
    const [x, y] = toView(point.xy, object.context);
    const circle = svgElement("circle", { cx: x, cy: y, r: 7, fill: COLOURS[point.label], stroke: "white",
      "stroke-width": 2, class: "pt", "data-index": point.index, "data-label": point.label });
    circle.addEventListener("click", () => flip(point.index));
    svg.appendChild(circle);
  }
  $("category").textContent = `category: ${object.category}`;
  $("progress").textContent = `object ${object.index + 1} of ${object.num_objects} (id ${object.ann_id}, ` +
    `${object.status}) · ${numObject} object and ${numBackground} background points of ${object.num_points}`;
  $("btn-prev").disabled = object.prev_id === null;
  $("btn-next").disabled = object.next_id === null;
  document.body.dataset.object = `${object.ann_id}:${object.points.map((p) => p.label ?? "-").join("")}`;
}

async function load(annId) {
  const answer = await api("GET", `/api/object/${annId}`);
  if (!answer.ok) { $("message").textContent = answer.data.error; return; }
  await setImage($("context-img"), answer.data.context_url, answer.data.context);
  history.replaceState(null, "", `/review?ann=${annId}`);
  $("message").textContent = "";
  draw(answer.data);
}

async function flip(index) {
  const answer = await api("POST", "/api/flip", { ann_id: object.ann_id, point_index: index });
  if (answer.ok) { $("message").textContent = ""; draw(answer.data); }
  else $("message").textContent = answer.data.error;
}

function go(annId) { if (annId !== null && annId !== undefined) load(annId); }

$("btn-prev").addEventListener("click", () => go(object && object.prev_id));
$("btn-next").addEventListener("click", () => go(object && object.next_id));
document.addEventListener("keydown", (event) => {
  if (!object || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "p" || event.key === "ArrowLeft") go(object.prev_id);
  if (event.key === "n" || event.key === "ArrowRight") go(object.next_id);
});

(async () => {
  const requested = new URLSearchParams(location.search).get("ann");
  if (requested !== null && /^\d+$/.test(requested)) return load(Number(requested));
  const answer = await api("GET", "/api/objects");
  if (!answer.ok) { $("message").textContent = answer.data.error; return; }
  const objects = answer.data.objects;
  if (objects.length === 0) { $("progress").textContent = "this job has no objects"; return; }
  const first = objects.find((o) => o.num_labelled > 0) || objects[0];
  load(first.ann_id);
})();
