// The page of `alexsearch serve`: it uses only the JSON API (/api/...), fetches nothing
// from elsewhere. The URL holds the state (?id=123&k=12&mode=binary&view=collection, or
// ?label=cat&min_prob=0.5, ?view=duplicates&tier=similar), so a search can be bookmarked
// and Back works (history.pushState + popstate). Every answer names the generation of the
// index it came from (header Alexsearch-Generation): when it is not the one the page
// shows, the page reads /api/info again and drops what it kept of the old generation.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;
let MAP = null;
let GENERATION = null; // the generation of INFO, as the header writes it ("2,1" over several)

function params() {
  const p = new URLSearchParams(location.search);
  return {
    id: p.get("id"),
    k: p.get("k") || $("k").value,
    mode: p.get("mode") || "",
    view: p.get("view") || "search",
    label: p.get("label") || "",
    min_prob: p.get("min_prob") || "",
    tier: p.get("tier") || $("dup-tier").value,
  };
}

function urlFor(s) {
  const p = new URLSearchParams();
  if (s.view && s.view !== "search") p.set("view", s.view);
  const hasId = s.id !== null && s.id !== undefined && s.id !== "";
  if (hasId) p.set("id", s.id);
  else if (s.label) { // a search from a photo leaves the class
    p.set("label", s.label);
    if (s.min_prob) p.set("min_prob", s.min_prob);
  }
  p.set("k", s.k);
  if (s.mode) p.set("mode", s.mode);
  if (s.view === "duplicates" && s.tier) p.set("tier", s.tier);
  return "?" + p.toString();
}

function status(text, isError) {
  const el = $("status");
  el.textContent = text || "";
  el.className = isError ? "error" : "";
}

// A hit's photo reference: its catalogue id, or over several indexes "PART:ID" (ids are
// per index; the server names each hit's part).
function refOf(h) {
  return h.part === undefined ? h.id : h.part + ":" + h.id;
}

function basename(path) {
  return (path || "").split(/[\\/]/).pop();
}

function parent(path) {
  const parts = (path || "").split(/[\\/]/);
  return parts.length > 1 ? parts[parts.length - 2] : "";
}

// -- views

function show(view) {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.view === view);
  }
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
  if (view === "collection") loadCollection();
  if (view === "info") renderInfo();
  if (view === "duplicates") loadDuplicates();
}

for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => {
    const s = { ...params(), view: b.dataset.view };
    history.pushState(stateOf(s), "", urlFor(s));
    show(s.view);
  });
}

function stateOf(s, extra) {
  return {
    id: s.id, k: s.k, mode: s.mode, view: s.view, label: s.label, min_prob: s.min_prob,
    tier: s.tier, ...(extra || {}),
  };
}

// -- searching

function queryFields(k, mode) {
  const f = { k: String(k) };
  if (mode === "binary") f.binary = "true";
  if (mode === "rerank") f.rerank = String(Math.max(100, Number(k)));
  return f;
}

// One answer of the API: its JSON, or an Error holding the server's one line. An answer
// from another generation than the page shows refreshes the page's view of the index.
async function api(url, options, from) {
  const r = await fetch(url, options);
  const j = await r.json();
  const gen = r.headers.get("Alexsearch-Generation");
  if (gen !== null && GENERATION !== null && gen !== GENERATION) newGeneration(from);
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

function post(body) {
  return api("/api/query", { method: "POST", body }, "query");
}

async function searchId(id, k, mode) {
  status("searching…");
  const fd = new FormData();
  fd.append("id", id);
  for (const [name, v] of Object.entries(queryFields(k, mode))) fd.append(name, v);
  try {
    const res = await post(fd);
    renderQuery("/api/image/" + id, res.query, id);
    renderResults(res, mode);
  } catch (e) {
    status(e.message, true);
  }
}

async function searchFile(file) {
  if (!file) return;
  const s = params();
  status("searching with " + (file.name || "the pasted image") + "…");
  const fd = new FormData();
  fd.append("image", file, file.name || "pasted.png");
  for (const [name, v] of Object.entries(queryFields(s.k, s.mode))) fd.append(name, v);
  try {
    const res = await post(fd);
    const src = URL.createObjectURL(file);
    const name = file.name || "pasted image";
    const next = { ...s, id: null, view: "search" };
    // an upload cannot live in the URL: its results live in the history entry
    history.pushState(stateOf(next, { upload: { src, name, res } }), "", urlFor(next));
    show("search");
    renderQuery(src, name, "");
    renderResults(res, s.mode);
  } catch (e) {
    status(e.message, true);
  }
}

function renderQuery(src, path, id) {
  $("label-head").hidden = true;
  $("query").hidden = false;
  $("query").dataset.id = id;
  $("query-img").src = src;
  $("query-name").textContent = basename(path);
  $("query-path").textContent = path && path.includes("/") ? path : "";
}

function renderResults(res, mode) {
  $("label-head").hidden = true;
  const grid = $("results");
  grid.replaceChildren();
  const bits = mode === "binary";
  for (const h of res.neighbours) {
    const d = bits ? h.distance + " bits" : h.distance.toFixed(3);
    grid.append(photoLink(refOf(h), h.path, "#" + h.rank + "  " + d, h.index));
  }
  const note = res.precision ? ` (query ${res.precision}, index ${res.index_precision})` : "";
  status(res.neighbours.length + " nearest" + note);
}

// -- a photo as a link that searches from it ("more like this")

function photoLink(id, path, caption, index) {
  const a = document.createElement("a");
  a.className = "hit";
  a.dataset.id = id;
  const s = { ...params(), id: String(id), view: "search" };
  a.href = urlFor(s);
  a.title = index ? path + "\nfrom the index " + index : path;
  if (index) a.dataset.index = index;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = "/api/image/" + id;
  img.alt = basename(path);
  img.onerror = () => { img.onerror = null; img.src = "/api/thumb/" + id; };
  const d = document.createElement("div");
  d.className = "d";
  d.textContent = caption;
  const n = document.createElement("div");
  n.className = "n";
  n.textContent = parent(path) + "/" + basename(path);
  a.append(img, d, n);
  a.addEventListener("click", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.shiftKey) return; // a new tab: let the link go
    ev.preventDefault();
    go({ ...params(), id: String(id), view: "search" });
  });
  return a;
}

// -- the photos of a class (their top-5 classes, from fc8 at index time)

async function searchLabel(word, k, minProb) {
  status("looking for " + word + "…");
  $("query").hidden = true;
  $("results").replaceChildren();
  $("label-head").hidden = true;
  const ask = { word, k: String(k) };
  if (minProb) ask.min_prob = minProb;
  try {
    const j = await api("/api/label?" + new URLSearchParams(ask), {}, "label");
    $("label-head").hidden = false;
    $("label-head").textContent = `class "${j.label}": ${j.classes.join(", ")}` +
      (j.unlabelled ? ` (${j.unlabelled} photos not labelled yet)` : "");
    $("results").replaceChildren(...j.photos.map((h) =>
      photoLink(refOf(h), h.path, `${h.label} ${(h.prob * 100).toFixed(1)}%`, h.index)));
    status(j.photos.length + " photos of " + j.classes.join(", ") +
      (minProb ? ` at probability ${minProb} or more` : ""));
  } catch (e) {
    status(e.message, true);
  }
}

$("label-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const word = $("label-word").value.trim();
  if (!word) { status("type a class name, such as cat", true); return; }
  const minProb = $("label-min-prob").value.trim();
  go({ ...params(), id: null, label: word, min_prob: minProb, view: "search" });
});

// -- duplicates: groups found by the library, read-only here

// Asked again each time the tab opens: the server keeps each tier's groups until the
// index publishes a new generation, so this is cheap and never stale.
let dupAsked = 0; // only the latest answer is drawn (the tier may change while one runs)

async function loadDuplicates() {
  const tier = params().tier;
  const asked = ++dupAsked;
  $("dup-status").textContent = "looking for duplicates…";
  $("dup-groups").replaceChildren();
  try {
    const j = await api("/api/duplicates?" + new URLSearchParams({ tier }), {}, "duplicates");
    if (asked !== dupAsked) return;
    $("dup-groups").replaceChildren(...j.groups.map((g) => {
      const box = document.createElement("div");
      box.className = "dup-group";
      box.dataset.tier = g.tier;
      const head = document.createElement("div");
      head.className = "head";
      head.textContent = `${g.tier} · ${g.files.length} photos · keep ${basename(g.keep)}`;
      const row = document.createElement("div");
      row.className = "dup-row";
      row.append(...g.files.map((f, i) => {
        const a = photoLink(f.id, f.path,
          (i === 0 ? "keep · " : "") + `${g.tier} ${f.distance.toFixed(3)}`);
        if (i === 0) a.classList.add("keep");
        return a;
      }));
      box.append(head, row);
      return box;
    }));
    $("dup-status").textContent = `${j.groups.length} groups, ${j.duplicates} duplicates ` +
      `among ${j.files} photos (${j.tiers.join(", ")}; keep: ${j.keep_rule})`;
  } catch (e) {
    if (asked !== dupAsked) return;
    $("dup-status").textContent = "no duplicates: " + e.message;
  }
}

$("dup-tier").addEventListener("change", () => {
  go({ ...params(), tier: $("dup-tier").value, view: "duplicates" });
});

function go(s) {
  history.pushState(stateOf(s), "", urlFor(s));
  window.scrollTo(0, 0);
  render(s, null);
}

function render(s, st) {
  if (![...$("k").options].some((o) => o.value === String(s.k))) {
    $("k").add(new Option(String(s.k), String(s.k))); // a k from the URL
  }
  $("k").value = String(s.k);
  if (!$("mode-box").hidden) $("mode").value = s.mode;
  if ([...$("dup-tier").options].some((o) => o.value === s.tier)) $("dup-tier").value = s.tier;
  show(s.view);
  if (st && st.upload) {
    renderQuery(st.upload.src, st.upload.name, "");
    renderResults(st.upload.res, s.mode);
  } else if (s.id !== null && s.id !== "") {
    searchId(s.id, s.k, s.mode);
  } else if (s.label && s.view === "search") {
    $("label-word").value = s.label;
    $("label-min-prob").value = s.min_prob;
    searchLabel(s.label, s.k, s.min_prob);
  } else {
    $("label-head").hidden = true;
    $("query").hidden = true;
    $("results").replaceChildren();
    status("");
  }
}

window.addEventListener("popstate", (ev) => render(params(), ev.state));

for (const el of [$("k"), $("mode")]) {
  el.addEventListener("change", () => {
    const s = { ...params(), k: $("k").value, mode: $("mode").value };
    const st = history.state;
    if (st && st.upload && s.id === null) {
      status("choose the photo again to search it with these settings");
      history.replaceState({ ...st, k: s.k, mode: s.mode }, "", urlFor(s));
      return;
    }
    go(s);
  });
}

// -- input: the file picker, drag and drop, paste

$("file").addEventListener("change", (ev) => {
  searchFile(ev.target.files[0]);
  ev.target.value = "";
});

document.addEventListener("dragover", (ev) => {
  ev.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", (ev) => {
  if (ev.target === document.documentElement || ev.clientX <= 0) {
    document.body.classList.remove("dragging");
  }
});
document.addEventListener("drop", (ev) => {
  ev.preventDefault();
  document.body.classList.remove("dragging");
  const file = [...(ev.dataTransfer.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) searchFile(file);
  else status("drop an image file", true);
});
document.addEventListener("paste", (ev) => {
  const item = [...(ev.clipboardData.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) searchFile(item.getAsFile());
});

// -- the collection: t-SNE map and conv1 kernels

function colour(i) {
  return `hsl(${(i * 137.508) % 360}, 65%, 48%)`;
}

async function loadCollection() {
  if (!$("kernels").src) $("kernels").src = "/api/kernels";
  if (MAP && INFO && MAP.generation === INFO.generation) return;
  $("map-status").textContent = "computing the t-SNE map (once per index generation)…";
  try {
    const j = await api("/api/map", {}, "map");
    MAP = j;
    drawMap();
    $("map-status").textContent = `${j.points.length} photos, t-SNE (${j.method}), ` +
      `generation ${j.generation}`;
  } catch (e) {
    $("map-status").textContent = "no map: " + e.message;
  }
}

function drawMap() {
  const c = $("map");
  const ctx = c.getContext("2d");
  const labels = [...new Set(MAP.points.map((p) => p.label))].sort();
  const index = Object.fromEntries(labels.map((l, i) => [l, i]));
  const pad = 10, size = c.width - 2 * pad;
  const r = MAP.points.length > 5000 ? 1.5 : MAP.points.length > 1000 ? 2.5 : 4;
  ctx.clearRect(0, 0, c.width, c.height);
  for (const p of MAP.points) {
    p.cx = pad + p.x * size;
    p.cy = pad + (1 - p.y) * size;
    ctx.fillStyle = colour(index[p.label]);
    ctx.beginPath();
    ctx.arc(p.cx, p.cy, r, 0, 2 * Math.PI);
    ctx.fill();
  }
  const counts = {};
  for (const p of MAP.points) counts[p.label] = (counts[p.label] || 0) + 1;
  $("legend").replaceChildren(...labels.slice(0, 40).map((l) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.style.background = colour(index[l]);
    li.append(sw, `${l} (${counts[l]})`);
    return li;
  }));
}

function nearestPoint(ev) {
  if (!MAP) return null;
  const c = $("map");
  const box = c.getBoundingClientRect();
  const x = (ev.clientX - box.left) * (c.width / box.width);
  const y = (ev.clientY - box.top) * (c.height / box.height);
  let best = null, bd = 100;
  for (const p of MAP.points) {
    const d = (p.cx - x) ** 2 + (p.cy - y) ** 2;
    if (d < bd) { bd = d; best = p; }
  }
  return best;
}

$("map").addEventListener("mousemove", (ev) => {
  const p = nearestPoint(ev);
  const tip = $("map-tip");
  if (!p) { tip.hidden = true; return; }
  tip.hidden = false;
  tip.style.left = (p.cx * $("map").getBoundingClientRect().width / $("map").width + 12) + "px";
  tip.style.top = (p.cy * $("map").getBoundingClientRect().height / $("map").height + 12) + "px";
  const src = "/api/thumb/" + p.id;
  if (!$("map-tip-img").src.endsWith(src)) $("map-tip-img").src = src;
  $("map-tip-name").textContent = p.label + "/" + p.name;
});
$("map").addEventListener("mouseleave", () => { $("map-tip").hidden = true; });
$("map").addEventListener("click", (ev) => {
  const p = nearestPoint(ev);
  if (p) go({ ...params(), id: String(p.id), view: "search" });
});

// -- info

function renderInfo() {
  if (!INFO) return;
  const rows = ["index", "files", "failed", "weights", "fingerprint", "kind", "precision",
    "geometry", "codes", "generation", "updated", "bytes_on_disk"];
  // over several indexes: the totals, then one line a part
  const parts = (INFO.parts || []).map((p, i) => [`index ${i}`,
    `${p.index}: ${p.files} photos, ${p.failed} failed, generation ${p.generation}`]);
  $("info-table").replaceChildren(...rows.filter((r) => r in INFO && !(INFO.parts &&
    r === "index")).map((r) => [r, INFO[r]]).concat(parts).map(([r, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = r;
    b.textContent = String(v);
    tr.append(a, b);
    return tr;
  }));
  $("failures").replaceChildren(...(INFO.failures || []).map((f) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = f.path;
    if (f.index) a.title = "in the index " + f.index;
    b.textContent = f.reason;
    tr.append(a, b);
    return tr;
  }));
}

// -- the index: its summary, read at load and again whenever a new generation shows up

let infoAsked = 0; // only the latest answer is drawn

async function readInfo() {
  const asked = ++infoAsked;
  const r = await fetch("/api/info");
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  if (asked !== infoAsked) return;
  INFO = j;
  GENERATION = r.headers.get("Alexsearch-Generation") || String(j.generation);
  $("summary").textContent = INFO.parts
    ? `${INFO.files} photos in ${INFO.parts.length} indexes (not merged) · ${INFO.kind}`
    : `${INFO.files} photos · ${INFO.kind || ""} · generation ${INFO.generation}`;
  $("mode-box").hidden = !INFO.binary;
  if (INFO.binary) {
    $("mode").value = params().mode;
    $("mode-binary").textContent =
      `binary codes, Hamming (${INFO.binary.bytes_per_image} bytes an image, ` +
      `fc7 ${INFO.dimension * 4})`;
  }
}

// An answer came from a generation the page does not show (`from` names whose): read the
// summary again, then redraw the open tab's per-generation view (the map is kept by
// generation; the duplicates are asked again unless that answer was theirs).
async function newGeneration(from) {
  try {
    await readInfo();
  } catch (e) {
    status("cannot read the index: " + e.message, true);
    return;
  }
  const view = params().view;
  if (view === "info") renderInfo();
  if (view === "collection") loadCollection();
  if (view === "duplicates" && from !== "duplicates") loadDuplicates();
}

// A tab shown again asks whether the index changed meanwhile (no polling while hidden).
document.addEventListener("visibilitychange", async () => {
  if (document.visibilityState !== "visible" || GENERATION === null) return;
  try {
    await api("/api/generation", {}, "visible");
  } catch (e) {
    // the server is away: the next search says so
  }
});

async function start() {
  try {
    await readInfo();
  } catch (e) {
    status("cannot read the index: " + e.message, true);
  }
  const s = params();
  history.replaceState(stateOf(s), "", location.search ? urlFor(s) : location.pathname);
  render(s, null);
}

start();
