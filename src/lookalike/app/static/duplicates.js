// The duplicates page: each group side by side with its keeper marked; the user changes
// the keeper, skips or confirms groups, and moves the copies of the confirmed ones.
// Plain browser JavaScript, no build step; every URL is relative to the page.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, errorText } = window.lookalikeApi;
  const els = {
    summary: $("summary"), keep: $("keep"), keepIn: $("keep-in"), reload: $("reload"),
    moveTo: $("move-to"), apply: $("apply"), undo: $("undo"), status: $("status"), groups: $("groups"),
  };
  const state = { answer: null, reads: "open", lastManifest: null, blobs: [] };

  function say(text, error = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", error);
  }

  function size(bytes) {
    if (bytes == null) return "";
    const units = ["B", "KB", "MB", "GB"];
    let n = bytes;
    let u = 0;
    while (n >= 1000 && u < units.length - 1) { n /= 1000; u += 1; }
    return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
  }

  // An image of the API (static/api.js), fetched with the token when reads need it.
  function setImage(img, url) {
    window.lookalikeApi.setImage(img, url, state.reads === "token", state.blobs);
  }

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    Object.assign(node, props);
    for (const c of children) node.append(c);
    return node;
  }

  function keepRule() {
    const folder = els.keepIn.value.trim();
    return folder ? `in:${folder}` : els.keep.value;
  }

  // ------------------------------------------------------------------ one group
  // The keeper is a file: its item and, where the item shows several files, its path.
  function markKeeper(section, keeper, keeperPath) {
    section.dataset.keeper = String(keeper);
    section.dataset.keeperPath = keeperPath || "";
    for (const fig of section.querySelectorAll(".dup-member")) {
      const file = fig.dataset.file === "1";
      const keeps = keeperPath ? fig.dataset.path === keeperPath : Number(fig.dataset.id) === keeper;
      fig.classList.toggle("keeper", keeps);
      fig.classList.toggle("mover", file && !keeps);
      fig.querySelector(".badge").textContent = keeps ? "keep" : file ? "move" : "not a file";
      const radio = fig.querySelector("input[type=radio]");
      if (radio) radio.checked = keeps;
    }
  }

  function member(m, n) {
    const img = el("img", { alt: `item #${m.id}`, loading: "lazy" });
    setImage(img, m.thumbnail_url);
    const facts = m.problem ? m.problem :
      `${m.width}×${m.height} ${m.format} · ${size(m.bytes)}` + (m.taken ? ` · taken ${m.taken.replace("T", " ")}` : "");
    const fig = el("figure", { className: "dup-member" }, [
      img,
      el("p", { className: "source", textContent: m.path || m.source || `item #${m.id}` }),
      el("p", { className: "facts muted", textContent: facts }),
      el("span", { className: "badge" }),
    ]);
    fig.dataset.id = String(m.id);
    fig.dataset.path = m.path || "";
    fig.dataset.file = m.problem ? "0" : "1";
    if (!m.problem) {
      const radio = el("input", { type: "radio", name: `keep-${n}`, value: m.path || String(m.id) });
      radio.addEventListener("change", () => {
        const section = fig.closest(".dup-group");
        markKeeper(section, m.id, m.path);
        section.querySelector(".reason").textContent = "keeper chosen by hand";
      });
      fig.append(el("label", { className: "small" }, [radio, " keep this one"]));
    }
    return fig;
  }

  function group(g, n) {
    const confirm = el("input", { type: "checkbox", className: "confirm" });
    const skip = el("button", { type: "button", className: "secondary skip", textContent: "Skip" });
    const section = el("li", { className: "dup-group" }, [
      el("div", { className: "dup-head" }, [
        el("h2", { textContent: `Group ${n + 1} · ${g.tier} · ${g.members.length} items` }),
        el("span", { className: "reason", textContent: g.keeper == null ? g.reason : `keep: ${g.reason}` }),
        el("span", { className: "actions" }, [
          el("label", { className: "small" }, [confirm, " confirm"]), skip]),
      ]),
      el("div", { className: "dup-members" }, g.members.map((m) => member(m, n))),
    ]);
    section.dataset.ids = Array.from(new Set(g.members.map((m) => m.id))).join(",");
    if (g.keeper == null) {
      confirm.disabled = true;
      skip.disabled = true;
    } else {
      markKeeper(section, g.keeper, g.keeper_path);
    }
    for (const fig of section.querySelectorAll(".dup-member")) {
      if (g.keeper == null) fig.querySelector(".badge").textContent = fig.dataset.file === "1" ? "" : "not a file";
    }
    confirm.addEventListener("change", () => {
      section.classList.toggle("confirmed", confirm.checked);
      if (confirm.checked) section.classList.remove("skipped");
      updateApply();
    });
    skip.addEventListener("click", () => {
      const skipped = section.classList.toggle("skipped");
      skip.textContent = skipped ? "Unskip" : "Skip";
      if (skipped) { confirm.checked = false; section.classList.remove("confirmed"); }
      confirm.disabled = skipped;
      updateApply();
    });
    return section;
  }

  // ------------------------------------------------------------------ the page
  function confirmed() {
    return Array.from(els.groups.querySelectorAll(".dup-group.confirmed:not(.skipped)")).map((s) => ({
      ids: s.dataset.ids.split(",").map(Number), keeper: Number(s.dataset.keeper),
      keeper_path: s.dataset.keeperPath || null,
    }));
  }

  function updateApply() {
    const n = confirmed().length;
    const on = state.answer && state.answer.move_to;
    els.apply.disabled = !on || n === 0;
    els.apply.textContent = n ? `Move the copies of ${n} confirmed group${n > 1 ? "s" : ""}` :
      "Move the copies of the confirmed groups";
  }

  function show(answer) {
    state.answer = answer;
    for (const url of state.blobs) URL.revokeObjectURL(url);
    state.blobs = [];
    const movable = answer.groups.filter((g) => g.keeper != null);
    const copies = movable.reduce((n, g) => n + g.members.filter((m) => !m.problem && (g.keeper_path ? m.path !== g.keeper_path : m.id !== g.keeper)).length, 0);
    els.summary.textContent = `${answer.groups.length} group(s) among ${answer.count.toLocaleString()} images · ` +
      `${copies} cop${copies === 1 ? "y" : "ies"} to move · keep rule: ${answer.keep}`;
    els.moveTo.textContent = answer.move_to ? `Copies move into ${answer.move_to}, with a manifest to undo it.` :
      "Moving is off: start the service with --move-to DIR to move copies from this page.";
    els.groups.replaceChildren(...answer.groups.map(group));
    updateApply();
  }

  async function load() {
    const response = await api(`api/duplicates?keep=${encodeURIComponent(keepRule())}`);
    if (!response.ok) { say(await errorText(response), true); return; }
    show(await response.json());
  }

  async function post(url, body) {
    return api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  async function move() {
    const groups = confirmed();
    if (!groups.length) return;
    els.apply.disabled = true;
    say("moving…");
    const response = await post("api/duplicates/move", { groups });
    if (!response.ok) { say(await errorText(response), true); updateApply(); return; }
    const out = await response.json();
    state.lastManifest = out.manifest;
    els.undo.hidden = false;
    await load();
    say(`Moved ${out.moved.length} file(s); ${out.not_moved.length} not moved. Manifest ${out.manifest}.`);
  }

  async function undo() {
    if (!state.lastManifest) return;
    els.undo.disabled = true;
    say("putting back…");
    const response = await post("api/duplicates/undo", { manifest: state.lastManifest });
    els.undo.disabled = false;
    if (!response.ok) { say(await errorText(response), true); return; }
    const out = await response.json();
    els.undo.hidden = true;
    state.lastManifest = null;
    await load();
    say(`Put back ${out.put_back} file(s) from ${out.manifest}.`);
  }

  async function start() {
    const response = await api("api/stats");
    if (response.ok) state.reads = (await response.json()).access.reads;
    await load();
  }

  els.reload.addEventListener("click", () => { load().catch((e) => say(String(e), true)); });
  els.keep.addEventListener("change", () => { els.keepIn.value = ""; load().catch((e) => say(String(e), true)); });
  els.apply.addEventListener("click", () => { move().catch((e) => say(String(e), true)); });
  els.undo.addEventListener("click", () => { undo().catch((e) => say(String(e), true)); });
  start().catch((e) => say(String(e), true));
})();
