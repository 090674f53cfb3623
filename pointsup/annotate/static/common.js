// Helpers shared by the labelling page and the review page.
"use strict";

const $ = (id) => document.getElementById(id);

// JSON request to the tool's server: {ok, status, data}; a network failure gives status 0.
async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    const response = await fetch(path, init);
    return { ok: response.ok, status: response.status, data: await response.json() };
  } catch (err) {
    return { ok: false, status: 0, data: { error: "cannot reach the annotation server: is it running?" } };
  }
}

// Image pixels (continuous frame) -> view pixels, with the view's {crop_xyxy, width, height}.
function toView(xy, view) {
  const [x0, y0, x1, y1] = view.crop_xyxy;
  return [(xy[0] - x0) * view.width / (x1 - x0), (xy[1] - y0) * view.height / (y1 - y0)];
}

function svgElement(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

// Size an SVG overlay to its view and clear it.
function resetSvg(svg, view) {
  svg.setAttribute("width", view.width);
  svg.setAttribute("height", view.height);
  svg.replaceChildren();
}

// Resolve once `img` shows `url` (at once if it already does).
function setImage(img, url, view) {
  img.width = view.width;
  img.height = view.height;
  if (img.getAttribute("src") === url && img.complete) return Promise.resolve();
  return new Promise((resolve) => {
    img.onload = () => resolve();
    img.onerror = () => resolve();
    img.src = url;
  });
}

// Draw an object's box on its context view.
function drawBox(svg, object) {
  const [bx0, by0, bx1, by1] = object.box_xyxy;
  const [x0, y0] = toView([bx0, by0], object.context);
  const [x1, y1] = toView([bx1, by1], object.context);
  svg.appendChild(svgElement("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0,
    fill: "none", stroke: "#ffd400", "stroke-width": 2 }));
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "?";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
