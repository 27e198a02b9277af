// The review card (st.components.v2): the item in hand plus the next ones, preloaded, with the keys
// handled here, so the next item shows at once. Decisions go to Python as one numbered queue; the
// card resends every decision Python has not acknowledged (a state value only carries the latest
// value), Python applies each number once. A refusal is shown in the card, never dropped.
// Captions are user and model text: they only ever go into textContent or a textarea's value.

const KEYS = "A approve · E edit the caption · Ctrl+Enter save the edit · X (or R) reject, then 1–6 for the " +
  "reason · S skip · U undo · Esc leave the caption box";

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Word diff (longest common subsequence of words), shown as "  same", "- removed", "+ added" lines.
function wordDiff(before, after) {
  const a = before.split(/\s+/).filter(Boolean), b = after.split(/\s+/).filter(Boolean);
  const n = a.length, m = b.length, L = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const runs = [];
  const push = (op, w) => { const last = runs[runs.length - 1];
    if (last && last[0] === op) last[1].push(w); else runs.push([op, [w]]); };
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { push("  ", a[i]); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) push("- ", a[i++]); else push("+ ", b[j++]);
  }
  while (i < n) push("- ", a[i++]);
  while (j < m) push("+ ", b[j++]);
  return runs.map(([op, w]) => op + w.join(" ")).join("\n") || "(no words)";
}

function build(root) {
  const card = el("div", { class: "cap-card", tabindex: "-1", "data-testid": "reviewCard" });
  card.innerHTML = `
    <div class="cap-status" role="status" aria-live="polite"></div>
    <div class="cap-errors" role="alert"></div>
    <div class="cap-warn" role="alert"></div>
    <div class="cap-body">
      <div class="cap-left"><img class="cap-img" alt="" width="320" height="320"></div>
      <div class="cap-right">
        <h3 class="cap-label"></h3>
        <div class="cap-meta"></div>
        <div class="cap-flags"></div>
        <label class="cap-field">Caption (the teacher's draft; press E or Tab to edit, then Ctrl+Enter)
          <textarea class="cap-caption" rows="4" spellcheck="true"></textarea></label>
        <div class="cap-diff" hidden><strong>Changes against the teacher's draft</strong> (− removed, + added)
          <pre><code class="cap-diff-code"></code></pre></div>
        <div class="cap-row">
          <label class="cap-field">Reject reason <select class="cap-reason"></select></label>
          <label class="cap-field">Note (optional) <input class="cap-note" type="text"></label>
        </div>
      </div>
    </div>
    <div class="cap-buttons">
      <button class="cap-btn cap-primary" data-act="approve">Approve (A)</button>
      <button class="cap-btn" data-act="edit_approve">Save edit (Ctrl+Enter)</button>
      <button class="cap-btn" data-act="reject">Reject (X)</button>
      <button class="cap-btn" data-act="skip">Skip (S)</button>
      <button class="cap-btn" data-act="undo">Undo (U)</button>
    </div>
    <div class="cap-keys"></div>`;
  root.appendChild(card);
  const q = (s) => card.querySelector(s);
  q(".cap-keys").textContent = "Keys: " + KEYS + ". Letters work when no text box is focused.";
  return { card, img: q(".cap-img"), label: q(".cap-label"), meta: q(".cap-meta"), flags: q(".cap-flags"),
    caption: q(".cap-caption"), diff: q(".cap-diff"), diffCode: q(".cap-diff-code"), reason: q(".cap-reason"),
    note: q(".cap-note"), status: q(".cap-status"), errors: q(".cap-errors"), warn: q(".cap-warn") };
}

function makeState(root, setStateValue) {
  const S = { client: Math.random().toString(36).slice(2) + Date.now().toString(36), seq: 0, pending: [],
    decided: new Set(), items: [], shownSeq: 0, errors: [], undoing: null, current: null, previewed: null,
    rejecting: false, reasons: [], ui: build(root), setStateValue, preload: new Map() };
  const ui = S.ui;
  ui.card.addEventListener("click", (e) => {
    const act = e.target.closest && e.target.closest("[data-act]");
    if (act) act2(S, act.dataset.act);
  });
  ui.caption.addEventListener("input", () => showDiff(S));
  ui.reason.addEventListener("change", () => { if (S.rejecting && ui.reason.value) act2(S, "reject"); });
  S.onKey = (e) => onKey(S, e);
  return S;
}

const itemKey = (it) => `${it.id}:${it.version}`;
const visible = (S) => S.items.filter((it) => !S.decided.has(itemKey(it)));

function warn(S, text) { S.ui.warn.textContent = text || ""; }

function onKey(S, e) {
  if (!S.ui.card.isConnected) return;
  const t = e.target, typing = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    if (t === S.ui.caption || !typing) { e.preventDefault(); e.stopPropagation(); act2(S, "edit_approve"); }
    return;
  }
  if (e.key === "Escape" && typing) { t.blur(); S.ui.card.focus(); e.stopPropagation(); return; }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const k = e.key.toLowerCase();
  const reasonIx = S.rejecting && /^[1-9]$/.test(k) ? Number(k) - 1 : -1;
  let act = null;
  if (reasonIx >= 0 && reasonIx < S.reasons.length) { S.ui.reason.value = S.reasons[reasonIx][0]; act = "reject"; }
  else act = { a: "approve", x: "reject", r: "reject", s: "skip", u: "undo", e: "edit" }[k] || null;
  if (!act) return;
  e.preventDefault(); e.stopPropagation();
  act2(S, act);
}

function act2(S, act) {
  const ui = S.ui, it = S.current;
  warn(S, "");
  if (act === "edit") { ui.caption.focus(); return; }
  if (S.undoing !== null) { warn(S, "Wait: your undo is being applied. Nothing was decided by that key."); return; }
  if (act === "undo") { S.undoing = send(S, { action: "undo" }); render(S); return; }
  if (!it) { warn(S, "No item is shown yet: nothing was decided by that key."); return; }
  const caption = ui.caption.value, base = it.caption;
  const d = { action: act, image_id: it.id, version: it.version };
  if (act === "approve") {
    if (caption !== base) { warn(S, "You edited the caption: save the edit with Ctrl+Enter."); return; }
    d.caption = base;
  } else if (act === "edit_approve") {
    if (caption === base) { warn(S, "The caption is unchanged: press A to approve it as it is."); return; }
    if (caption !== S.previewed) {
      S.previewed = caption; showDiff(S);
      warn(S, "Check the word diff below, then press Ctrl+Enter again to save."); return;
    }
    d.caption = caption;
  } else if (act === "reject") {
    if (!ui.reason.value) {
      S.rejecting = true;
      warn(S, "Reject: choose the reason, press " + S.reasons.map((r, i) => `${i + 1} ${r[1]}`).join(" · "));
      return;
    }
    d.reason = ui.reason.value; d.note = ui.note.value || null;
  }
  S.decided.add(itemKey(it));
  send(S, d);
  if (document.activeElement && S.ui.card.contains(document.activeElement)) S.ui.card.focus();
  render(S);
}

function send(S, d) {
  d.seq = ++S.seq;
  S.pending.push(d);
  // after the next paint: the next item shows first, then Streamlit's rerun starts (the decision is
  // already queued in S.pending, and a later send carries it too)
  if (!S.sendQueued) {
    S.sendQueued = true;
    requestAnimationFrame(() => setTimeout(() => {
      S.sendQueued = false;
      S.setStateValue("queue", { client: S.client, decisions: S.pending.slice() });
    }, 0));
  }
  return d.seq;
}

function showDiff(S) {
  const it = S.current, caption = S.ui.caption.value;
  const changed = it && caption !== it.draft;
  S.ui.diff.hidden = !changed;
  if (changed) S.ui.diffCode.textContent = wordDiff(it.draft, caption);
}

function render(S) {
  const ui = S.ui, queue = visible(S), it = S.undoing === null ? queue[0] || null : null;
  const same = it && S.current && itemKey(it) === itemKey(S.current);
  ui.errors.replaceChildren(...S.errors.map((m) => el("div", { class: "cap-error" }, m)));
  if (!same) {
    S.current = it; S.previewed = null; S.rejecting = false;
    ui.card.dataset.item = it ? String(it.id) : "";
    if (!it) {
      ui.img.removeAttribute("src"); ui.caption.value = ""; ui.caption.disabled = true; ui.diff.hidden = true;
      ui.label.textContent = S.undoing !== null ? "Undoing your last decision…"
        : S.pending.length ? "Loading the next items…" : S.emptyText;
      ui.meta.textContent = ""; ui.flags.replaceChildren();
    } else {
      ui.img.src = it.png; ui.img.alt = `Image of item ${it.id} (${it.label})`;
      ui.label.textContent = `Class: ${it.label}`;
      ui.meta.textContent = `Item ${it.id} · ${it.state} · version ${it.version}`;
      ui.flags.replaceChildren(...(it.flags.length ? it.flags.map((f) => el("span", { class: "cap-flag" }, f))
        : [el("span", { class: "cap-flag cap-clean" }, "No auto-flags")]));
      ui.caption.disabled = false; ui.caption.value = it.caption; ui.reason.value = ""; ui.note.value = "";
      showDiff(S);
    }
  }
  ui.card.dataset.pending = String(S.pending.length);
  ui.card.dataset.queued = String(queue.length);  // the item shown and those preloaded behind it
  for (const next of queue.slice(1, 6)) {  // decode the next images now, so showing them costs nothing
    if (!S.preload.has(next.id)) { const im = new Image(); im.src = next.png; S.preload.set(next.id, im); }
  }
  if (S.preload.size > 50) S.preload = new Map([...S.preload].slice(-20));
}

function update(S, data) {
  S.emptyText = data.empty_text;
  if (!S.reasons.length) {
    S.reasons = data.reasons;
    S.ui.reason.replaceChildren(el("option", { value: "" }, "choose one to reject"),
      ...data.reasons.map(([v, t], i) => el("option", { value: v }, `${i + 1} ${t}`)));
  }
  S.items = data.items;
  const acked = (data.acked || {})[S.client] || 0;
  S.pending = S.pending.filter((d) => d.seq > acked);
  for (const r of data.results || []) {
    if (r.client !== S.client || r.seq <= S.shownSeq) continue;
    S.shownSeq = r.seq;
    if (r.ok) S.ui.status.textContent = r.message;
    else {
      S.errors = [...S.errors, r.message].slice(-4);
      // refused: if the item is still in hand, show it again
      for (const it of S.items) if (it.id === r.image_id) S.decided.delete(itemKey(it));
    }
    if (S.undoing !== null && r.seq >= S.undoing) S.undoing = null;
  }
  if (S.undoing !== null && acked >= S.undoing) S.undoing = null;
  if (!S.pending.length) {  // forget decided ids Python no longer holds
    const held = new Set(S.items.map(itemKey));
    for (const k of [...S.decided]) if (!held.has(k)) S.decided.delete(k);
  }
  render(S);
}

// One card per page, kept across remounts: Streamlit may mount the component again in a new element
// (a fragment rerun cut short by the next one leaves the old element on the page). A card per mount
// lost the decisions the old one had not yet had acknowledged and left a frozen copy on screen, so the
// card, its numbered queue and its client id live on the window, and a new mount takes the card over.
export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let S = window.__capReviewCard, remounted = false;
  if (S && S.reviewer !== data.reviewer) {  // someone else signed in on this tab: nothing of theirs carries over
    window.removeEventListener("keydown", S.onKey, true);
    S.ui.card.remove();
    S = null;
  }
  if (!S) {
    S = window.__capReviewCard = makeState(parentElement, setStateValue);
    S.reviewer = data.reviewer;
  } else if (S.ui.card.parentElement !== parentElement || !S.listening) {  // a new mount of the same card
    remounted = true;
    const focused = S.ui.card.contains(document.activeElement) ? document.activeElement : null;
    parentElement.appendChild(S.ui.card);  // moved, not copied: one card on the page
    if (focused) focused.focus();
  }
  if (!S.listening) {
    window.addEventListener("keydown", S.onKey, true);  // capture: before Streamlit's own shortcuts
    S.listening = true;
  }
  S.setStateValue = setStateValue;  // the live instance's: a send through a dead one is lost
  update(S, data);
  if (remounted && S.pending.length) {  // unacknowledged decisions of an earlier mount: send them through this one
    S.setStateValue("queue", { client: S.client, decisions: S.pending.slice() });
  }
  return () => {
    window.removeEventListener("keydown", S.onKey, true);
    S.listening = false;
  };
}
