// winnow review page: one card per flagged sample, keyboard first. Every decision goes to the
// server at once (POST /api/decide), in the order it was made; the server's review_queue is the
// truth, and this page polls it so decisions from other tabs show up here.
"use strict";
(() => {
  const RUN = new URLSearchParams(location.search).get("run");
  const POLL_MS = 3000;
  const STATUS_ACTION = { pending: "pending", accepted: "accept", relabelled: "relabel", dropped: "drop" };
  const $ = (id) => document.getElementById(id);

  let rows = [];                // queue rows, in queue order
  const byId = new Map();       // sample_id -> row
  const cardOf = new Map();     // sample_id -> card element
  let classes = {};             // batch_id -> class names
  let visible = [];             // sample ids shown under the filters, in display order
  let focusedId = null;
  const undoStack = [];         // {id, previous: {status, new_label}, madeAt}
  const inflight = new Map();   // sample_id -> decisions sent and not answered yet
  let chain = Promise.resolve(); // decisions are sent one after another, in the order made

  const withRun = (path) => RUN ? path + (path.includes("?") ? "&" : "?") + "run=" + encodeURIComponent(RUN) : path;
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const names = (row) => classes[row.batch_id] || [];
  const className = (row, label) => (label >= 0 && label < names(row).length ? names(row)[label] : String(label));
  const labelText = (row, label) => { const n = className(row, label); return n === String(label) ? n : `${label} · ${n}`; };
  const statusText = (row) => (row.status === "relabelled" ? `relabelled → ${labelText(row, row.new_label)}` : row.status);
  const thumbUrl = (row) => `/api/thumb?batch=${encodeURIComponent(row.batch_id)}&id=${encodeURIComponent(row.sample_id)}`;
  const fmt = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(3));

  function toast(text, error = false) {
    const t = $("toast");
    t.textContent = text;
    t.className = error ? "error" : "";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, error ? 6000 : 2500);
  }

  function reviewer() { return $("reviewer").value.trim(); }

  // ------------------------------------------------------------------ cards

  function makeCard(row) {
    const card = document.createElement("article");
    card.className = "card " + row.status;
    card.tabIndex = -1;
    card.dataset.sampleId = row.sample_id;
    card.dataset.status = row.status;
    card.innerHTML =
      (row.image ? `<img class="thumb" loading="lazy" alt="sample ${esc(row.sample_id)}" src="${thumbUrl(row)}">`
                 : `<div class="noimage">no image</div>`) +
      `<div class="sid" title="${esc(row.sample_id)}">${esc(row.sample_id)}</div>` +
      `<div><span class="given">${esc(className(row, row.given_label))}</span> → ` +
      `<span class="suggested">${esc(className(row, row.suggested_label))}</span></div>` +
      `<div class="status">${esc(statusText(row))}</div>`;
    card.addEventListener("click", () => focusCard(row.sample_id));
    return card;
  }

  function refreshCard(id) {
    const row = byId.get(id), card = cardOf.get(id);
    card.className = "card " + row.status + (id === focusedId ? " focused" : "");
    card.dataset.status = row.status;
    card.querySelector(".status").textContent = statusText(row);
    if (id === focusedId) renderInspector(row);
  }

  function applyState(id, state) {
    const row = byId.get(id);
    if (!row) return;
    Object.assign(row, state);
    refreshCard(id);
  }

  // ------------------------------------------------------------------ the focused sample

  function renderInspector(row) {
    const ranks = Object.keys(row.ranks).sort((a, b) => row.ranks[a] - row.ranks[b]);
    const picker = names(row).map((n, i) => {
      const cls = [i === row.given_label ? "given" : "", i === row.suggested_label ? "suggested" : "",
                   row.status === "relabelled" && i === row.new_label ? "chosen" : ""].join(" ").trim();
      return `<button type="button" data-label="${i}" class="${cls}" title="relabel to ${esc(n)}${i < 10 ? ` (key ${i})` : ""}">${esc(labelText(row, i))}</button>`;
    }).join("");
    const decided = row.status === "pending" ? "pending"
      : `${esc(statusText(row))}${row.decided_by ? ` · by ${esc(row.decided_by)}` : ""}${row.decided_at ? ` · ${esc(row.decided_at.slice(0, 19).replace("T", " "))} UTC` : ""}`;
    $("inspector").innerHTML =
      `<h2>${esc(row.sample_id)}</h2>` +
      (row.image ? `<img class="big" alt="sample ${esc(row.sample_id)}, large" src="${thumbUrl(row)}">`
                 : `<div class="big-noimage">no image (this data is not a picture)</div>`) +
      `<p>given <span class="given">${esc(labelText(row, row.given_label))}</span> · suggested ` +
      `<span class="suggested">${esc(labelText(row, row.suggested_label))}</span></p>` +
      `<p class="decided" id="decided">${decided}</p>` +
      `<div class="actions"><button type="button" data-action="accept">accept (a)</button>` +
      `<button type="button" data-action="drop">drop (d)</button><button type="button" data-action="undo">undo (u)</button></div>` +
      `<div>relabel to:</div><div id="picker">${picker}</div>` +
      `<table><tr><th>scorer</th><th class="num">score</th><th class="num">rank</th><th>flags it</th></tr>` +
      ranks.map((s) => `<tr><td>${esc(s)}</td><td class="num">${fmt(row.scores[s])}</td><td class="num">#${row.ranks[s]}</td>` +
                       `<td>${row.flagged_by.includes(s) ? "yes" : ""}</td></tr>`).join("") + `</table>` +
      `<p class="decided">batch <code>${esc(row.batch_id.slice(0, 12))}</code>${row.run_id ? ` · run <code>${esc(row.run_id.slice(0, 12))}</code>` : ""}</p>` +
      (row.explanation
        ? `<div>explanation: original · IG given · IG suggested · counterfactual → given · → suggested</div>` +
          `<a href="/api/explanation?id=${encodeURIComponent(row.sample_id)}" target="_blank" title="full size">` +
          `<img class="explanation" alt="explanation panels of ${esc(row.sample_id)}" src="/api/explanation?id=${encodeURIComponent(row.sample_id)}"></a>`
        : `<p class="decided">no explanation (run <code>winnow explain</code> on the audit run to add one)</p>`);
  }

  $("inspector").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b || !focusedId) return;
    const id = focusedId;
    if (b.dataset.label !== undefined) decideAndAdvance(id, "relabel", Number(b.dataset.label));
    else if (b.dataset.action === "undo") undo();
    else if (b.dataset.action) decideAndAdvance(id, b.dataset.action, null);
  });

  function focusCard(id, scroll = true) {
    if (!id || !cardOf.has(id)) return;
    const old = cardOf.get(focusedId);
    if (old) { old.classList.remove("focused"); old.tabIndex = -1; }
    focusedId = id;
    const card = cardOf.get(id);
    card.classList.add("focused");
    card.tabIndex = 0;
    card.focus({ preventScroll: true });
    if (scroll) card.scrollIntoView({ block: "nearest" });
    renderInspector(byId.get(id));
  }

  function move(step) {
    if (!visible.length) return;
    const i = visible.indexOf(focusedId);
    focusCard(visible[Math.max(0, Math.min(visible.length - 1, (i < 0 ? 0 : i + step)))]);
  }

  function columns() {
    const first = cardOf.get(visible[0]);
    if (!first) return 1;
    let n = 0;
    for (const id of visible) { if (cardOf.get(id).offsetTop !== first.offsetTop) break; n++; }
    return Math.max(1, n);
  }

  function nextPendingAfter(id) {
    const i = visible.indexOf(id);
    const order = visible.slice(i + 1).concat(visible.slice(0, Math.max(0, i)));
    return order.find((s) => byId.get(s).status === "pending" && !inflight.has(s));
  }

  // ------------------------------------------------------------------ decisions

  function send(id, action, label, expect) {
    return fetch(withRun("/api/decide"), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sample_id: id, action, label: action === "relabel" ? label : null, by: reviewer(), expect }),
    }).then(async (res) => ({ status: res.status, data: await res.json().catch(() => ({ error: res.statusText })) }));
  }

  function queued(id, work) {
    inflight.set(id, (inflight.get(id) || 0) + 1);
    cardOf.get(id).classList.add("saving");
    chain = chain.then(work).catch((err) => toast(`not saved: ${err}`, true)).finally(() => {
      const left = inflight.get(id) - 1;
      if (left > 0) inflight.set(id, left); else { inflight.delete(id); cardOf.get(id).classList.remove("saving"); }
    });
    return chain;
  }

  function decide(id, action, label) {
    const row = byId.get(id);
    if (action === "relabel" && label === row.given_label) action = "accept"; // "relabel" to the given label = it was right
    if (action === "relabel" && !(label >= 0 && label < names(row).length)) { toast(`no class ${label} in this batch`, true); return false; }
    queued(id, async () => {
      const previous = { status: row.status, new_label: row.new_label };
      const { status, data } = await send(id, action, label, row.decided_at);
      if (status === 409) { // another tab or person decided it since: show theirs, keep it
        applyState(data.sample_id, data.state);
        setProgress(data.progress);
        toast(`${data.error} — kept; decide again to override`, true);
        return;
      }
      if (status !== 200) { toast(`not saved: ${data.error}`, true); return; }
      applyState(id, data.state);
      setProgress(data.progress);
      undoStack.push({ id, previous, madeAt: data.state.decided_at });
    });
    return true;
  }

  function decideAndAdvance(id, action, label) {
    if (!decide(id, action, label)) return;
    const next = nextPendingAfter(id);
    if (next) focusCard(next); else focusCard(id);
  }

  function undo() {
    if (!undoStack.length && !inflight.size) { toast("nothing to undo"); return; }
    chain = chain.then(async () => {
      const last = undoStack.pop();
      if (!last) { toast("nothing to undo"); return; }
      const { id, previous, madeAt } = last;
      const { status, data } = await send(id, STATUS_ACTION[previous.status], previous.new_label, madeAt);
      if (status === 409) { applyState(data.sample_id, data.state); setProgress(data.progress); toast(`cannot undo: ${data.error}`, true); return; }
      if (status !== 200) { toast(`undo failed: ${data.error}`, true); return; }
      applyState(id, data.state);
      setProgress(data.progress);
      focusCard(id);
      toast(`undone: ${id} is ${statusText(byId.get(id))} again`);
    }).catch((err) => toast(`undo failed: ${err}`, true));
  }

  // ------------------------------------------------------------------ progress, filters, polling

  function setProgress(p) {
    $("progress-fill").style.width = p.flagged ? `${(100 * p.reviewed) / p.flagged}%` : "0";
    $("progress-text").textContent = `${p.reviewed} / ${p.flagged} reviewed`;
    $("precision").textContent = p.precision === null ? "est. precision: no decisions yet"
      : `est. precision ${p.precision.toFixed(2)} (95% ${p.precision_low.toFixed(2)}–${p.precision_high.toFixed(2)})`;
    document.title = `winnow review · ${p.reviewed}/${p.flagged}`;
  }

  function applyFilters(keepFocus = true) {
    const cls = $("filter-class").value, st = $("filter-status").value, sc = $("filter-scorer").value;
    let shown = rows.filter((r) => (!cls || r.given_class === cls) && (!st || r.status === st) && (!sc || r.flagged_by.includes(sc)));
    if (sc) shown = shown.slice().sort((a, b) => a.ranks[sc] - b.ranks[sc]);
    visible = shown.map((r) => r.sample_id);
    const keep = new Set(visible);
    const frag = document.createDocumentFragment();
    for (const id of visible) frag.appendChild(cardOf.get(id));
    for (const r of rows) { const c = cardOf.get(r.sample_id); c.hidden = !keep.has(r.sample_id); if (c.hidden) frag.appendChild(c); }
    $("cards").appendChild(frag);
    if (!visible.length) { $("inspector").innerHTML = "<p>no sample matches these filters</p>"; focusedId = null; return; }
    if (keepFocus && keep.has(focusedId)) focusCard(focusedId);
    else focusCard(visible.find((s) => byId.get(s).status === "pending") || visible[0]);
  }

  function fillFilters() {
    const given = [...new Set(rows.map((r) => r.given_class))].sort();
    $("filter-class").insertAdjacentHTML("beforeend", given.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join(""));
    const scorers = [...new Set(rows.flatMap((r) => Object.keys(r.ranks)))].sort();
    $("filter-scorer").insertAdjacentHTML("beforeend", scorers.map((s) => `<option value="${esc(s)}">${esc(s)}</option>`).join(""));
    for (const id of ["filter-class", "filter-status", "filter-scorer"]) $(id).addEventListener("change", () => applyFilters(false));
  }

  async function poll() {
    try {
      const res = await fetch(withRun("/api/state"));
      if (!res.ok) return;
      const data = await res.json();
      for (const [id, state] of Object.entries(data.rows)) {
        const row = byId.get(id);
        if (row && !inflight.has(id) && (row.status !== state.status || row.decided_at !== state.decided_at)) applyState(id, state);
      }
      if (!inflight.size) setProgress(data.progress);
    } catch (_) { /* the server went away: keep the page, try again */ }
  }

  // ------------------------------------------------------------------ keys

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, select, textarea")) return;
    const k = e.key;
    let handled = true;
    if (k === "ArrowRight" || k === "j") move(1);
    else if (k === "ArrowLeft" || k === "k") move(-1);
    else if (k === "ArrowDown") move(columns());
    else if (k === "ArrowUp") move(-columns());
    else if (k === "Home") focusCard(visible[0]);
    else if (k === "End") focusCard(visible[visible.length - 1]);
    else if (!focusedId) handled = false;
    else if (k === "a") decideAndAdvance(focusedId, "accept", null);
    else if (k === "d") decideAndAdvance(focusedId, "drop", null);
    else if (/^[0-9]$/.test(k)) decideAndAdvance(focusedId, "relabel", Number(k));
    else if (k === "u") undo();
    else handled = false;
    if (handled) e.preventDefault();
  });

  // ------------------------------------------------------------------ start

  async function start() {
    const t0 = performance.now();
    const res = await fetch(withRun("/api/queue"));
    const data = await res.json();
    if (!res.ok) { $("cards").innerHTML = `<p>${esc(data.detail || res.statusText)}</p>`; return; }
    rows = data.rows;
    classes = data.classes;
    const stored = localStorage.getItem("winnow-reviewer");
    $("reviewer").value = stored || data.reviewer;
    $("reviewer").addEventListener("change", () => localStorage.setItem("winnow-reviewer", reviewer()));
    const frag = document.createDocumentFragment();
    for (const row of rows) {
      byId.set(row.sample_id, row);
      const card = makeCard(row);
      cardOf.set(row.sample_id, card);
      frag.appendChild(card);
    }
    $("cards").appendChild(frag);
    fillFilters();
    setProgress(data.progress);
    if (!rows.length) $("inspector").innerHTML = "<p>the review queue is empty</p>";
    else applyFilters(false);
    document.body.dataset.loadedMs = String(Math.round(performance.now() - t0));
    document.body.dataset.ready = "true";
    setInterval(poll, POLL_MS);
    window.addEventListener("focus", poll);
  }

  start().catch((err) => { $("cards").innerHTML = `<p>could not load the queue: ${esc(err)}</p>`; });
})();
