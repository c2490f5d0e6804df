// The lookalike page: query by a dropped, picked or drawn image, or by a result; narrow by a
// filter, a region of the query picture, and results marked more like or less like it.
// Plain browser JavaScript, no build step; every URL is relative to the page.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    stats: $("stats"), drop: $("drop"), file: $("file"), canvas: $("canvas"), preview: $("preview"),
    previewCaption: $("preview-caption"), hint: $("hint"), clear: $("clear"),
    searchDrawing: $("search-drawing"), k: $("k"), ranking: $("ranking"), rankingNote: $("ranking-note"),
    rerank: $("ranking-rerank"), exact: $("ranking-exact"), query: $("query"),
    queryImage: $("query-image"), queryText: $("query-text"), status: $("status"), results: $("results"),
    addQuery: $("add-query"), filterForm: $("filter-form"), filter: $("filter"),
    queryFrame: $("query-frame"), cropBox: $("crop-box"), refine: $("refine"),
    clearMarks: $("clear-marks"), whole: $("whole"), viewer: $("viewer"), viewerTitle: $("viewer-title"),
    viewerLink: $("viewer-link"), viewerPath: $("viewer-path"), viewerImage: $("viewer-image"),
    viewerClose: $("viewer-close"),
  };
  const state = {
    stats: null,        // GET api/stats
    last: null,         // the last query: {kind: "image", blob, name, url} or {kind: "id", id}
    drawn: false,       // whether the canvas holds strokes
    seq: 0,             // answers to older requests are dropped
    blobs: [],          // object URLs of the images fetched with the token, revoked when replaced
    like: new Set(),    // ids of results marked "more like this"
    unlike: new Set(),  // ids of results marked "less like this"
    crop: null,         // [x, y, w, h] fractions of the query picture, or null for all of it
  };
  // Ink and paper: white on black for grey collections (as MNIST/digits), black on white for colour.
  let paper = "#000";
  let ink = "#fff";

  // ------------------------------------------------------------------ status
  function say(text, error = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", error);
  }

  const { api, errorText } = window.lookalikeApi;  // (static/api.js: the token)

  // An image of the API: a plain URL, or, when reads need the token, fetched with it.
  function setImage(img, url) {
    window.lookalikeApi.setImage(img, url, Boolean(state.stats && state.stats.access.reads === "token"),
                                 state.blobs);
  }

  // ------------------------------------------------------------------ collection
  function showStats(s) {
    const ranking = s.reranks ? `${s.rerank} re-ranking` : "exact search";
    const access = s.access.writes === "off" ? " · read-only" : "";
    els.stats.textContent = `${s.count.toLocaleString()} images · ${s.model.arch} model, ` +
      `${s.dimension}-d codes · index ${s.index.name} ${s.index.factory || ""} · ${ranking}${access}`;
  }

  async function loadStats() {
    const response = await api("api/stats");
    if (!response.ok) throw new Error(await errorText(response));
    const s = await response.json();
    state.stats = s;
    const input = s.input;
    showStats(s);
    els.k.max = s.max_k;
    els.ranking.hidden = !s.reranks;
    els.rankingNote.hidden = s.reranks;
    const grey = input.channels === 1;
    paper = grey ? "#000" : "#fff";
    ink = grey ? "#fff" : "#000";
    els.canvas.style.background = paper;
    els.preview.width = input.width;
    els.preview.height = input.height;
    els.previewCaption.textContent = `as the model sees it (${input.width}×${input.height})`;
    els.hint.textContent = `Draw a digit or a shape large and centred: it is cropped, centred ` +
      `and shrunk to ${input.width}×${input.height} ${grey ? "grey" : "colour"} pixels.`;
    clearCanvas();
  }

  // ------------------------------------------------------------------ searching
  function rerankValue() {
    if (!state.stats || !state.stats.reranks) return null;
    return els.rerank.checked;
  }

  function kValue() {
    const k = Number.parseInt(els.k.value, 10);
    return Number.isFinite(k) ? k : 10;
  }

  // The filter field's words as the search's query parameters: key:value, or a bare word
  // for a path glob or folder name. Throws on an unknown key.
  const FILTER_KEYS = { in: "in", after: "after", before: "before", label: "label", camera: "camera", gps: "has_gps" };

  function filterParams() {
    const params = new URLSearchParams();
    for (const word of els.filter.value.trim().split(/\s+/).filter(Boolean)) {
      const at = word.indexOf(":");
      const key = at > 0 ? word.slice(0, at).toLowerCase() : "in";
      let value = at > 0 ? word.slice(at + 1) : word;
      if (!(key in FILTER_KEYS) || !value) {
        throw new Error(`filter: "${word}" is not one of in:GLOB, after:DATE, before:DATE, label:NAME, camera:TEXT, gps:yes|no`);
      }
      if (key === "gps") value = /^(yes|true|1)$/i.test(value) ? "true" : "false";
      params.append(FILTER_KEYS[key], value);
    }
    return params;
  }

  // A new query: its marks and region start empty; search() with the same query keeps them.
  function fresh(query) {
    state.like.clear();
    state.unlike.clear();
    state.crop = null;
    return search(query);
  }

  async function search(query) {
    state.last = query;
    const seq = ++state.seq;
    const rerank = rerankValue();
    let params;
    try {
      params = filterParams();
    } catch (err) {
      say(err.message, true);
      return;
    }
    const like = [...state.like];
    const unlike = [...state.unlike];
    let request;
    if (query.kind === "id") {
      const body = { id: query.id, k: kValue() };
      if (rerank !== null) body.rerank = rerank;
      if (like.length) body.like = like;
      if (unlike.length) body.unlike = unlike;
      if (state.crop) body.crop = state.crop;
      request = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
      showQuery(query.original || `api/items/${query.id}/image?size=112`, `item #${query.id}`, false);
    } else {
      const form = new FormData();
      form.append("file", query.blob, query.name);
      form.append("k", String(kValue()));
      if (rerank !== null) form.append("rerank", String(rerank));
      if (like.length) form.append("like", like.join(","));
      if (unlike.length) form.append("unlike", unlike.join(","));
      if (state.crop) form.append("crop", state.crop.join(","));
      request = { method: "POST", body: form };
      showQuery(query.url, query.name, true);
    }
    showCrop();
    say("searching…");
    const where = params.toString();
    let response;
    try {
      response = await api(where ? `api/search?${where}` : "api/search", request);
    } catch (err) {
      if (seq === state.seq) say(`the server cannot be reached (${err.message})`, true);
      return;
    }
    if (seq !== state.seq) return;
    if (!response.ok) {
      say(await errorText(response), true);
      return;
    }
    render(await response.json());
  }

  function showQuery(url, text, local) {
    const shown = els.queryImage.getAttribute("src");
    if (shown && shown !== url && shown.startsWith("blob:")) URL.revokeObjectURL(shown);
    els.query.hidden = false;
    if (local) els.queryImage.src = url;
    else setImage(els.queryImage, url);
    const parts = [];
    if (state.like.size) parts.push(`more like ${state.like.size} result${state.like.size > 1 ? "s" : ""}`);
    if (state.unlike.size) parts.push(`less like ${state.unlike.size}`);
    if (state.crop) parts.push("a region");
    els.queryText.textContent = `Query: ${text}` + (parts.length ? ` (${parts.join(", ")})` : "");
    // an uploaded or drawn image can be added (a stored item is there already)
    els.addQuery.hidden = !local || !state.stats || state.stats.access.writes === "off";
  }

  // A distance in at most 6 characters: 0.123, 12.35, 1235, 1.2e+5.
  function shortDistance(d) {
    if (d === null) return "–";
    if (d < 10) return d.toFixed(3);
    if (d < 1e4) return d.toPrecision(4).replace(/\.?0+$/, "");
    return d.toExponential(1);
  }

  function smallButton(text, cls, title) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `mark ${cls}`;
    b.textContent = text;
    b.title = title;
    b.setAttribute("aria-label", title);
    return b;
  }

  function render(answer) {
    const list = els.results;
    for (const url of state.blobs) URL.revokeObjectURL(url);
    state.blobs = [];
    list.replaceChildren();
    for (const r of answer.results) {
      const li = document.createElement("li");
      const card = document.createElement("div");
      card.className = "result";
      card.dataset.id = String(r.id);
      const label = r.label_name ?? (r.label === null ? "" : String(r.label));
      const where = r.path || r.source;
      card.title = `${where}${r.taken ? `\ntaken ${r.taken.replace("T", " ")}` : ""}\n#${r.id} · distance ${r.distance}`;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "thumb";
      open.setAttribute("aria-label", r.original_url ? `open ${r.name}` : `search with ${r.name}`);
      const img = document.createElement("img");
      setImage(img, r.thumbnail_url);
      img.alt = `${r.name}${label ? `, label ${label}` : ""}`;
      open.append(img);
      open.addEventListener("click", () => (r.original_url ? view(r) : fresh({ kind: "id", id: r.id })));
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = r.name;
      const meta = document.createElement("span");
      meta.className = "meta";
      const lab = document.createElement("span");
      lab.className = "label";
      lab.textContent = label;
      const dist = document.createElement("span");
      dist.className = "distance";
      dist.textContent = shortDistance(r.distance);
      meta.append(lab, dist);
      const actions = document.createElement("span");
      actions.className = "actions";
      const again = smallButton("Search", "search-it", "search with this one");
      again.addEventListener("click", () => fresh({ kind: "id", id: r.id, original: r.original_url }));
      const more = smallButton("+", "more", "more like this");
      const less = smallButton("−", "less", "less like this");
      more.addEventListener("click", () => mark(r.id, card, state.like, state.unlike));
      less.addEventListener("click", () => mark(r.id, card, state.unlike, state.like));
      actions.append(again, more, less);
      card.append(open, name, meta, actions);
      paintMarks(card);
      li.append(card);
      list.append(li);
    }
    const how = answer.rerank ? "re-ranked" : "exact";
    const ms = (answer.seconds * 1000).toFixed(1);
    const only = Object.keys(answer.filter || {}).length ? ", filtered" : "";
    say(answer.results.length
      ? `${answer.results.length} results${only}, ${how}, in ${ms} ms (distance: ${answer.distance}). ` +
        "Click a picture to open it."
      : (only ? "no results: nothing passes the filter" : "no results (the collection is empty)"));
    showMarks();
  }

  // ------------------------------------------------------------------ more like, less like
  function mark(id, card, into, other) {
    if (into.has(id)) into.delete(id);
    else { into.add(id); other.delete(id); }
    paintMarks(card);
    showMarks();
  }

  function paintMarks(card) {
    const id = Number(card.dataset.id);
    card.classList.toggle("liked", state.like.has(id));
    card.classList.toggle("unliked", state.unlike.has(id));
    card.querySelector(".more").setAttribute("aria-pressed", String(state.like.has(id)));
    card.querySelector(".less").setAttribute("aria-pressed", String(state.unlike.has(id)));
  }

  function showMarks() {
    const marked = state.like.size + state.unlike.size;
    els.refine.hidden = marked === 0;
    els.clearMarks.hidden = marked === 0;
    els.refine.textContent = `Search again (${state.like.size} more like, ${state.unlike.size} less like)`;
  }

  els.refine.addEventListener("click", () => { if (state.last) search(state.last); });
  els.clearMarks.addEventListener("click", () => {
    state.like.clear();
    state.unlike.clear();
    for (const card of els.results.querySelectorAll(".result")) paintMarks(card);
    showMarks();
  });

  // ------------------------------------------------------------------ the original file
  function view(r) {
    els.viewerTitle.textContent = r.name;
    els.viewerPath.textContent = `${r.path || r.source}${r.taken ? ` · taken ${r.taken.replace("T", " ")}` : ""}`;
    els.viewerLink.href = r.original_url;
    els.viewerImage.removeAttribute("src");
    setImage(els.viewerImage, r.original_url);
    els.viewer.showModal();
  }

  els.viewerClose.addEventListener("click", () => els.viewer.close());
  els.viewer.addEventListener("click", (e) => { if (e.target === els.viewer) els.viewer.close(); });

  // ------------------------------------------------------------------ a region of the query
  // A box dragged over the query picture: its corners as fractions of the picture.
  let dragFrom = null;

  function fraction(e) {
    const box = els.queryImage.getBoundingClientRect();
    return {
      x: Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)),
      y: Math.min(1, Math.max(0, (e.clientY - box.top) / box.height)),
    };
  }

  function boxOf(a, b) {
    return [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.abs(a.x - b.x), Math.abs(a.y - b.y)];
  }

  function drawBox(crop) {
    els.cropBox.hidden = !crop;
    if (!crop) return;
    const w = els.queryImage.clientWidth, h = els.queryImage.clientHeight;
    Object.assign(els.cropBox.style, {
      left: `${crop[0] * w}px`, top: `${crop[1] * h}px`, width: `${crop[2] * w}px`, height: `${crop[3] * h}px`,
    });
  }

  function showCrop() {
    drawBox(state.crop);
    els.whole.hidden = !state.crop;
  }

  els.queryFrame.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    els.queryFrame.setPointerCapture(e.pointerId);
    dragFrom = fraction(e);
  });
  els.queryFrame.addEventListener("pointermove", (e) => {
    if (dragFrom) drawBox(boxOf(dragFrom, fraction(e)));
  });
  els.queryFrame.addEventListener("pointerup", (e) => {
    if (!dragFrom) return;
    const crop = boxOf(dragFrom, fraction(e)).map((v) => Math.round(v * 1000) / 1000);
    dragFrom = null;
    if (crop[2] < 0.03 || crop[3] < 0.03) { showCrop(); return; }  // a click, not a box
    state.crop = crop;
    if (state.last) search(state.last);
  });
  els.whole.addEventListener("click", () => {
    state.crop = null;
    if (state.last) search(state.last);
  });

  // ------------------------------------------------------------------ the filter
  els.filterForm.addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.last) search(state.last);
    else {
      try { filterParams(); say("the filter applies to the next search"); } catch (err) { say(err.message, true); }
    }
  });

  // ------------------------------------------------------------------ adding
  async function addQuery() {
    const query = state.last;
    if (!query || query.kind !== "image") return;
    const form = new FormData();
    form.append("files", query.blob, query.name);
    say("adding…");
    let response;
    try {
      response = await api("api/items", { method: "POST", body: form });
    } catch (err) {
      say(`the server cannot be reached (${err.message})`, true);
      return;
    }
    if (!response.ok) {
      say(await errorText(response), true);
      return;
    }
    const answer = await response.json();
    const item = answer.items[0];
    state.stats.count = answer.count;
    showStats(state.stats);
    say(item.added ? `${query.name} added as item #${item.id}.`
      : `${query.name} is in the collection already, as item #${item.id}.`);
  }

  els.addQuery.addEventListener("click", addQuery);

  // ------------------------------------------------------------------ files
  function searchFile(file) {
    if (!file) return;
    if (file.size > (state.stats ? state.stats.max_upload_bytes : Infinity)) {
      say(`${file.name} is larger than the server's limit of ${state.stats.max_upload_bytes.toLocaleString()} bytes`, true);
      return;
    }
    fresh({ kind: "image", blob: file, name: file.name || "image", url: URL.createObjectURL(file) });
  }

  els.file.addEventListener("change", () => {
    searchFile(els.file.files[0]);
    els.file.value = "";
  });
  els.drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); els.file.click(); }
  });
  els.drop.addEventListener("click", (e) => { if (e.target === els.drop) els.file.click(); });
  for (const type of ["dragenter", "dragover"]) {
    els.drop.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    els.drop.addEventListener(type, () => els.drop.classList.remove("over"));
  }
  els.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    searchFile(e.dataTransfer.files[0]);
  });
  // A file dropped beside the zone must not replace the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  // ------------------------------------------------------------------ drawing
  const ctx = els.canvas.getContext("2d", { willReadFrequently: true });
  let drawing = false;
  let lastPoint = null;
  let autoSearch = 0;

  function clearCanvas() {
    ctx.fillStyle = paper;
    ctx.fillRect(0, 0, els.canvas.width, els.canvas.height);
    const p = els.preview.getContext("2d");
    p.fillStyle = paper;
    p.fillRect(0, 0, els.preview.width, els.preview.height);
    state.drawn = false;
    els.searchDrawing.disabled = true;
  }

  function strokeWidth() {
    // About 1.4 input pixels once a drawing that fills the canvas is shrunk to the input size,
    // and never thinner than a tenth of the canvas (MNIST's strokes are 2 to 3 of 28 pixels).
    const w = state.stats ? state.stats.input.width : 28;
    return els.canvas.width * Math.max(0.09, 1.4 / w);
  }

  function point(e) {
    const box = els.canvas.getBoundingClientRect();
    return {
      x: (e.clientX - box.left) * (els.canvas.width / box.width),
      y: (e.clientY - box.top) * (els.canvas.height / box.height),
    };
  }

  function line(a, b) {
    ctx.strokeStyle = ink;
    ctx.fillStyle = ink;
    ctx.lineWidth = strokeWidth();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  els.canvas.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    els.canvas.setPointerCapture(e.pointerId);
    drawing = true;
    clearTimeout(autoSearch);
    lastPoint = point(e);
    line(lastPoint, lastPoint);
  });
  els.canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = point(e);
    line(lastPoint, p);
    lastPoint = p;
  });
  const endStroke = () => {
    if (!drawing) return;
    drawing = false;
    state.drawn = true;
    els.searchDrawing.disabled = false;
    updatePreview();
    // Search when the hand rests: a digit of several strokes searches once, at the end.
    clearTimeout(autoSearch);
    autoSearch = setTimeout(searchDrawing, 700);
  };
  els.canvas.addEventListener("pointerup", endStroke);
  els.canvas.addEventListener("pointercancel", endStroke);
  els.clear.addEventListener("click", () => { clearTimeout(autoSearch); clearCanvas(); });
  els.searchDrawing.addEventListener("click", () => { clearTimeout(autoSearch); searchDrawing(); });

  // The drawing, cropped to its ink, centred in a square with a margin (as MNIST centres
  // its digits in 20 of 28 pixels), at four times the input size: the server shrinks it.
  function croppedDrawing() {
    const { width, height } = els.canvas;
    const pixels = ctx.getImageData(0, 0, width, height).data;
    const background = paper === "#000" ? 0 : 255;
    let x0 = width, y0 = height, x1 = -1, y1 = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (Math.abs(pixels[(y * width + x) * 4] - background) > 32) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    if (x1 < 0) return null;
    const input = state.stats ? state.stats.input : { width: 28, height: 28 };
    const side = Math.max(x1 - x0 + 1, y1 - y0 + 1);
    const margin = input.width >= 16 ? 0.2 : 0.06;
    const box = side / (1 - 2 * margin);
    const out = document.createElement("canvas");
    out.width = input.width * 4;
    out.height = input.height * 4;
    const o = out.getContext("2d");
    o.fillStyle = paper;
    o.fillRect(0, 0, out.width, out.height);
    const cx = (x0 + x1 + 1) / 2, cy = (y0 + y1 + 1) / 2;
    o.imageSmoothingQuality = "high";
    o.drawImage(els.canvas, cx - box / 2, cy - box / 2, box, box, 0, 0, out.width, out.height);
    return out;
  }

  function updatePreview() {
    const crop = croppedDrawing();
    const p = els.preview.getContext("2d");
    p.fillStyle = paper;
    p.fillRect(0, 0, els.preview.width, els.preview.height);
    if (crop) {
      p.imageSmoothingQuality = "high";
      p.drawImage(crop, 0, 0, els.preview.width, els.preview.height);
    }
  }

  function searchDrawing() {
    const crop = croppedDrawing();
    if (!crop) { say("draw something first", true); return; }
    crop.toBlob((blob) => {
      if (!blob) { say("this browser could not turn the drawing into a PNG", true); return; }
      fresh({ kind: "image", blob, name: "drawing.png", url: URL.createObjectURL(blob) });
    }, "image/png");
  }

  // ------------------------------------------------------------------ options
  function again() { if (state.last) search(state.last); }
  els.rerank.addEventListener("change", again);
  els.exact.addEventListener("change", again);
  els.k.addEventListener("change", again);

  clearCanvas();
  loadStats().catch((err) => {
    els.stats.textContent = "the collection could not be loaded";
    say(String(err.message || err), true);
  });
})();
