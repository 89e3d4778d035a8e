// The streamer web page: parse a dropped photo, watch a live stream. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let classes = [];           // [{id, name, color}] from /api/classes
let watching = null;        // id of the stream shown
let sources = {};           // stream id -> its source, for the menu's labels
const objectUrls = {};

// ------------------------------------------------------------------ helpers
function token() {
  return $("token").value.trim();
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function errorText(response) {
  let reason = response.statusText;
  try {
    const body = await response.json();
    reason = body.error || body.detail || reason;
  } catch (e) { /* not JSON */ }
  const retry = response.headers.get("Retry-After");
  return `${response.status}: ${reason}${retry ? ` (retry in ${retry} s)` : ""}`;
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function showBlob(img, key, blob) {
  if (objectUrls[key]) URL.revokeObjectURL(objectUrls[key]);
  objectUrls[key] = URL.createObjectURL(blob);
  return new Promise((resolve, reject) => {
    img.onload = () => { img.hidden = false; resolve(); };
    img.onerror = () => {
      img.hidden = true;
      reject(new Error(`the ${key} image could not be shown`));
    };
    img.src = objectUrls[key];
  });
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ photo
async function loadClasses() {
  try {
    const response = await fetch("/api/classes");
    if (response.ok) classes = (await response.json()).classes;
  } catch (e) { /* the legend stays empty */ }
  renderLegend(null);
}

function renderLegend(counts) {
  const list = $("legend");
  list.textContent = "";
  for (const c of classes) {
    const pixels = counts ? counts[c.name] || 0 : 0;
    const item = el("li", {},
      el("span", { className: "swatch", title: c.color }),
      el("span", { textContent: c.name }),
      el("span", { className: "count", textContent: pixels ? pixels.toLocaleString() : "" }));
    item.querySelector(".swatch").style.background = c.color;
    item.dataset.classId = c.id;
    if (counts) item.classList.add(pixels ? "present" : "absent");
    list.append(item);
  }
}

function renderPersons(persons) {
  const body = $("persons").querySelector("tbody");
  body.textContent = "";
  for (const p of persons) {
    const top = Object.entries(p.classes).sort((a, b) => b[1] - a[1]).slice(0, 4)
      .map(([name, n]) => `${name} ${n.toLocaleString()}`).join(", ");
    body.append(el("tr", {},
      el("td", { textContent: p.id }),
      el("td", { textContent: p.score.toFixed(2) }),
      el("td", { textContent: p.box.join(", ") }),
      el("td", { textContent: p.pixels.toLocaleString() }),
      el("td", { textContent: top || "-" })));
  }
  if (!persons.length) body.append(el("tr", {}, el("td", { colSpan: 5, textContent: "nobody" })));
}

async function postImage(file, format) {
  const form = new FormData();
  form.append("image", file, file.name);
  const response = await fetch(`/api/parse?format=${format}`,
    { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function parseFile(file) {
  if (!file) return;
  setStatus("busy", `Parsing ${file.name}…`);
  $("overlay").removeAttribute("src");
  $("overlay").hidden = true;
  try {
    const shown = showBlob($("original"), "original", file);
    const started = performance.now();
    const summary = await (await postImage(file, "json")).json();
    // The same bytes again: answered from the cache, rendered as the overlay.
    const overlay = await (await postImage(file, "png")).blob();
    await Promise.all([shown, showBlob($("overlay"), "overlay", overlay)]);
    renderLegend(summary.classes);
    renderPersons(summary.persons);
    const total = Math.round(performance.now() - started);
    // parse_ms is when the result was computed: for a cache hit (or an upload that joined an
    // identical one) that was earlier, and it may exceed this request's own time.
    const how = summary.cache === "miss"
      ? `parsed in ${summary.parse_ms} ms by ${summary.model} (${summary.engine})`
      : `${summary.cache === "hit" ? "cache hit" : "shared with an identical upload"} ` +
        `(${summary.model}, ${summary.engine})`;
    setStatus("done", `${file.name}: ${summary.persons.length} person(s), ` +
      `${summary.width}×${summary.height}, ${how}, ${total} ms in all`);
  } catch (e) {
    setStatus("error", e.message);
  }
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    parseFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => {
    parseFile(e.target.files[0]);
    e.target.value = "";  // choosing the same file again is a new upload
  });
}

// ------------------------------------------------------------------ live
function liveStatus(text, isError = false) {
  $("live-status").textContent = text;
  $("live-status").classList.toggle("error", isError);
}

async function refreshStreams(select) {
  let streams = [];
  try {
    const response = await fetch("/api/streams");
    streams = (await response.json()).streams;
  } catch (e) {
    liveStatus(`cannot list streams: ${e.message}`, true);
    return;
  }
  const menu = $("streams");
  const keep = select || menu.value;
  menu.textContent = "";
  menu.append(el("option", { value: "", textContent: streams.length ? "choose a stream" :
    "no streams" }));
  sources = {};
  for (const s of streams) {
    sources[s.id] = s.source;
    menu.append(el("option", { value: s.id, textContent: streamLabel(s.id, s.state) }));
  }
  if (streams.some((s) => s.id === keep)) menu.value = keep;
  watch(menu.value || null);
}

function streamLabel(id, state) {
  return `${id}: ${sources[id]} (${state})`;
}

function watch(id) {
  if (id === watching) return;
  watching = id;
  const view = $("live-view");
  if (id) view.src = `/api/streams/${encodeURIComponent(id)}/mjpeg`;
  else view.removeAttribute("src");
  view.hidden = !id;
  $("live-empty").hidden = Boolean(id);
  $("live-empty").textContent = "Choose a stream to watch it here.";
  pollMetrics();
}

function show(id, value) {
  $(id).textContent = value === undefined || value === null ? "-" : value;
}

// Every stream's label in the menu says its state now (a stream that ended is no longer
// "running"), updated in place so that an open menu is not rebuilt under the pointer; the
// table below lists every stream's live metrics.
async function relabelStreams() {
  try {
    const response = await fetch("/api/streams");
    if (!response.ok) return;
    const streams = (await response.json()).streams;
    for (const s of streams) {
      const option = [...$("streams").options].find((o) => o.value === s.id);
      if (option && s.id in sources) option.textContent = streamLabel(s.id, s.state);
    }
    showStreamTable(streams);
  } catch (e) { /* try again on the next tick */ }
}

function ms(value) {
  return `${value.toFixed(0)} ms`;
}

function showStreamTable(streams) {
  const body = $("stream-table").querySelector("tbody");
  body.textContent = "";
  for (const s of streams) {
    const row = el("tr");
    row.dataset.stream = s.id;
    const cells = [s.id, s.state, s.fps.toFixed(1), s.parse_fps.toFixed(2),
      ms(s.overlay_age_ms.p50), ms(s.overlay_age_ms.p95), s.frames_dropped, s.reconnects,
      s.priority];
    const names = ["id", "state", "fps", "parse-fps", "age50", "age95", "dropped",
      "reconnects", "priority"];
    cells.forEach((value, i) => row.append(el("td", { textContent: String(value),
      className: `c-${names[i]}` })));
    body.append(row);
  }
}

async function pollMetrics() {
  if (!watching) {
    for (const id of ["s-state", "s-fps", "s-p50", "s-p95", "s-read", "s-parsed",
      "s-parse-fps", "s-age50", "s-age95", "s-dropped", "s-reconnects"]) show(id, "-");
    return;
  }
  try {
    const response = await fetch(`/api/streams/${encodeURIComponent(watching)}/metrics`);
    if (!response.ok) { liveStatus(await errorText(response), true); return; }
    const m = await response.json();
    show("s-state", m.state);
    // The menu says what the stream is doing now, not what it did when listed.
    const option = [...$("streams").options].find((o) => o.value === m.stream);
    if (option && m.stream in sources) option.textContent = streamLabel(m.stream, m.state);
    show("s-fps", m.current_fps.toFixed(1));
    show("s-p50", `${m.latency_ms.p50.toFixed(0)} ms`);
    show("s-p95", `${m.latency_ms.p95.toFixed(0)} ms`);
    show("s-read", m.frames_read);
    show("s-parsed", m.frames_parsed);
    show("s-parse-fps", m.parse_fps.toFixed(2));
    show("s-age50", ms(m.overlay_age_ms.p50));
    show("s-age95", ms(m.overlay_age_ms.p95));
    show("s-dropped", m.frames_dropped);
    show("s-reconnects", m.reconnects);
  } catch (e) { /* try again on the next tick */ }
}

async function startStream(event) {
  event.preventDefault();
  const body = { source: $("source").value.trim(), config: {} };
  liveStatus("starting…");
  const response = await fetch("/api/streams", {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...authHeaders() },
  });
  if (!response.ok) { liveStatus(await errorText(response), true); return; }
  const stream = await response.json();
  liveStatus(`started ${stream.id}`);
  await refreshStreams(stream.id);
}

async function stopStream() {
  const id = $("streams").value;
  if (!id) return;
  const response = await fetch(`/api/streams/${encodeURIComponent(id)}`,
    { method: "DELETE", headers: authHeaders() });
  if (!response.ok) { liveStatus(await errorText(response), true); return; }
  const done = await response.json();
  liveStatus(`stopped ${id}: ${done.summary.frames_read} frames read, ` +
    `${done.summary.frames_parsed} parsed`);
  watch(null);
  await refreshStreams();
}

// ------------------------------------------------------------------ start
function init() {
  $("token").value = sessionStorage.getItem("streamer-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("streamer-token", token()));
  setUpDrop();
  $("start-form").addEventListener("submit", startStream);
  $("refresh").addEventListener("click", () => refreshStreams());
  $("stop").addEventListener("click", stopStream);
  $("streams").addEventListener("change", (e) => watch(e.target.value || null));
  $("live-view").addEventListener("error", () => {
    // The stream is gone (deleted, or the server restarted): no broken image.
    if (!watching) return;
    $("live-view").hidden = true;
    $("live-empty").hidden = false;
    $("live-empty").textContent = `stream ${watching} is not available`;
  });
  loadClasses();
  refreshStreams();
  setInterval(pollMetrics, 1000);
  relabelStreams();
  setInterval(relabelStreams, 2000);
}

init();
