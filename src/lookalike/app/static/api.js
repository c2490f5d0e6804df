// What both pages share: fetch() with the service's token, asked for only when needed.
// Plain browser JavaScript, no build step; loaded before the page's own script.
"use strict";

window.lookalikeApi = (() => {
  const $ = (id) => document.getElementById(id);

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") return body.detail;
    } catch (_) { /* not JSON */ }
    return `${response.status} ${response.statusText}`;
  }

  // ------------------------------------------------------------------ the token
  // Asked for only when the server answers 401 (a change, or any read with --token-reads),
  // then sent with every request; kept in sessionStorage, so it ends with the tab.
  const TOKEN_KEY = "lookalike-token";

  function storedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
  }

  function keepToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token is asked again next time */ }
  }

  // The dialog that asks for it, made on first use (so a page holds no copy of it).
  function tokenDialog() {
    const made = $("token-dialog");
    if (made) return made;
    const el = (tag, props, ...children) => {
      const node = Object.assign(document.createElement(tag), props);
      node.append(...children);
      return node;
    };
    const dialog = el("dialog", { id: "token-dialog" },
      el("form", { method: "dialog" },
        el("h2", { id: "token-title", textContent: "Token needed" }),
        el("p", { id: "token-why", className: "muted small" }),
        el("label", { htmlFor: "token-input", textContent: "The service's token" }),
        el("input", { type: "password", id: "token-input", autocomplete: "off", spellcheck: false,
                      required: true }),
        el("div", { className: "dialog-buttons" },
          el("button", { type: "submit", value: "ok", id: "token-ok", textContent: "Use the token" }),
          el("button", { type: "submit", value: "cancel", id: "token-cancel", className: "secondary",
                         formNoValidate: true, textContent: "Cancel" }))));
    dialog.setAttribute("aria-labelledby", "token-title");
    document.body.append(dialog);
    return dialog;
  }

  function askToken(why) {
    const dialog = tokenDialog();
    const input = $("token-input");
    $("token-why").textContent = why;
    input.value = "";
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        const token = dialog.returnValue === "ok" ? input.value.trim() : "";
        input.value = "";
        resolve(token || null);
      }, { once: true });
    });
  }

  // fetch(), with the token when one is kept; on a 401 it asks for the token and tries
  // again, until the server takes it or the dialog is cancelled (then the 401 is returned).
  async function api(url, init = {}) {
    for (;;) {
      const token = storedToken();
      const headers = new Headers(init.headers || {});
      if (token) headers.set("Authorization", `Bearer ${token}`);
      const response = await fetch(url, { ...init, headers });
      if (response.status !== 401) return response;
      keepToken(null);
      const why = token ? "The server refused that token." : await errorText(response.clone());
      const given = await askToken(why);
      if (!given) return response;
      keepToken(given);
    }
  }

  // An image of the API into <img>: a plain URL, or, when reads need the token
  // (tokenReads), fetched with it as a blob whose object URL is pushed on blobs (the
  // page revokes them when it replaces its images).
  function setImage(img, url, tokenReads, blobs) {
    if (!tokenReads) { img.src = url; return; }
    api(url).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
      if (!blob) return;
      const local = URL.createObjectURL(blob);
      blobs.push(local);
      img.src = local;
    }).catch(() => { /* the card stays without its image */ });
  }

  return { api, errorText, setImage };
})();
