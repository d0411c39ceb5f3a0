"use strict";
// The churnlens workspace: the at-risk list (#) and an account page (#account=ID), over
// /workspace/* and /what_if. No library, no network beyond this server.
const KEY_NAME = "churnlens-api-key";
const PAGE_SIZE = 50;
const state = { offset: 0, filters: {}, sort: null };
let META = null;

const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const pct = (p) => (p == null ? "—" : (100 * p).toFixed(1) + "%");
const days = (d) => (d == null ? "—" : Math.round(d).toLocaleString());
function money(v) {
  if (v == null) return "—";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: META.currency,
      maximumFractionDigits: 0 }).format(v);
  } catch (e) {
    return Math.round(v).toLocaleString() + " " + META.currency;
  }
}
const tierBadge = (t) => `<span class="tier ${esc(t)}">${esc(t)}</span>`;

// ------------------------------------------------------------------ API key and calls
function askKey(message) {
  const form = $("#keyform");
  form.hidden = false;
  $("#keyerror").textContent = message || "";
  $("#apikey").focus();
  return new Promise((resolve) => {
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY_NAME, $("#apikey").value);
      form.hidden = true;
      resolve();
    };
  });
}

// While the server prepares the workspace (scoring the snapshot or reading a score file)
// its endpoints answer 503 with the progress and Retry-After: show it and ask again.
function showPreparing(p) {
  const box = $("#preparing");
  box.hidden = !p;
  if (!p) return;
  const share = p.total ? Math.floor((100 * p.done) / p.total) : 0;
  box.innerHTML = `Preparing the workspace (${esc(p.stage)}): ${p.done.toLocaleString()} of
    ${p.total.toLocaleString()} accounts <progress max="100" value="${share}"></progress>`;
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function api(path, options = {}) {
  for (;;) {
    const headers = { ...(options.headers || {}) };
    const key = sessionStorage.getItem(KEY_NAME);
    if (key) headers["X-API-Key"] = key;
    const resp = await fetch(path, { ...options, headers });
    if (resp.status === 401) {
      await askKey(key ? "That key was refused; try again." : "");
      continue;
    }
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 503 && body.preparing) {
        showPreparing(body.preparing);
        await sleep(1000 * Math.max(1, Number(resp.headers.get("Retry-After")) || 2));
        continue;
      }
      throw new Error(body.error || `${resp.status} ${resp.statusText}`);
    }
    showPreparing(null);
    return resp;
  }
}
const getJSON = async (path) => (await api(path)).json();

// ------------------------------------------------------------------ the at-risk list
function query(extra = {}) {
  const q = new URLSearchParams();
  const f = state.filters;
  (f.tiers || []).forEach((t) => q.append("tier", t));
  if (f.stage) q.set("stage", f.stage);
  if (f.attr && f.level) q.set("attr." + f.attr, f.level);
  if (f.renewal !== undefined && f.renewal !== "") q.set("renewal_within", f.renewal);
  if (f.q) q.set("q", f.q);
  q.set("sort", state.sort || META.default_sort);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return q.toString();
}

function filtersHtml() {
  const attrs = Object.keys(META.attributes).filter((a) => a !== "lifecycle_stage");
  const stages = META.attributes.lifecycle_stage || [];
  const f = state.filters;
  const opt = (v, label, sel) => `<option value="${esc(v)}"${sel ? " selected" : ""}>${esc(label)}</option>`;
  return `<form id="filters" class="filters">
    <fieldset><legend>Tier</legend>${META.tiers.map((t) => `<label><input type="checkbox"
      name="tier" value="${t}"${(f.tiers || []).includes(t) ? " checked" : ""}> ${t}</label>`).join("")}</fieldset>
    <label>Lifecycle stage<select name="stage">${opt("", "any")}${stages.map((s) => opt(s, s, f.stage === s)).join("")}</select></label>
    <label>Attribute<select name="attr">${opt("", "any")}${attrs.map((a) => opt(a, META.labels[a] || a, f.attr === a)).join("")}</select></label>
    <label>Value<select name="level">${opt("", "any")}${(META.attributes[f.attr] || []).map((l) => opt(l, l, f.level === l)).join("")}</select></label>
    <label>Renewal within (days)<input type="number" name="renewal" min="0" value="${esc(f.renewal ?? "")}"${META.has_renewal ? "" : " disabled"}></label>
    <label>Customer id<input type="search" name="q" placeholder="starts with..." value="${esc(f.q || "")}"></label>
    <label>Sort by<select name="sort">${META.sorts.map((s) => opt(s, s.replaceAll("_", " "), (state.sort || META.default_sort) === s)).join("")}</select></label>
    <button type="submit">Apply</button>
    <button type="button" class="plain" id="csv">Download CSV</button>
  </form>`;
}

function readFilters(form) {
  const data = new FormData(form);
  state.filters = { tiers: data.getAll("tier"), stage: data.get("stage"), attr: data.get("attr"),
    level: data.get("level"), renewal: data.get("renewal") ?? "", q: (data.get("q") || "").trim() };
  state.sort = data.get("sort");
  state.offset = 0;
}

function monthChart(summary) {
  const bars = [...summary.by_renewal_month];
  const w = 640, h = 190, left = 64, bottom = 28, top = 10;
  const max = Math.max(1, ...bars.map((b) => b.revenue_at_risk));
  const bw = (w - left - 10) / bars.length;
  const y = (v) => top + (h - top - bottom) * (1 - v / max);
  const ticks = [0, 0.5, 1].map((k) => `<text x="${left - 6}" y="${y(max * k) + 4}" text-anchor="end">${esc(money(max * k))}</text>
    <line x1="${left}" x2="${w - 10}" y1="${y(max * k)}" y2="${y(max * k)}" stroke="#eef1f4"/>`).join("");
  const rects = bars.map((b, i) => `<rect x="${left + i * bw + 3}" y="${y(b.revenue_at_risk)}" width="${bw - 6}"
      height="${h - bottom - y(b.revenue_at_risk)}" fill="#e07b2a"><title>${esc(b.month)}: ${esc(money(b.revenue_at_risk))}</title></rect>
    <text x="${left + i * bw + bw / 2}" y="${h - 10}" text-anchor="middle">${esc(/^\d{4}-\d\d$/.test(b.month) ? b.month.slice(2) : b.month)}</text>`).join("");
  return `<svg id="month-chart" viewBox="0 0 ${w} ${h}" width="100%" role="img"
    aria-label="revenue at risk by renewal month">${ticks}${rects}</svg>`;
}

function tierMix(summary) {
  const total = Math.max(1, summary.customers);
  const colors = { low: "var(--low)", medium: "var(--medium)", high: "var(--high)", critical: "var(--critical)" };
  let x = 0;
  const segs = summary.tiers.map((t) => {
    const w = (100 * t.customers) / total;
    const seg = `<rect x="${x}%" y="0" width="${w}%" height="18" fill="${colors[t.tier]}"><title>${t.tier}: ${t.customers}</title></rect>`;
    x += w;
    return seg;
  }).join("");
  const rows = summary.tiers.map((t) => `<tr><td>${tierBadge(t.tier)}</td><td class="num">${t.customers.toLocaleString()}</td>
    <td class="num">${pct(t.customers / total)}</td><td class="num">${esc(money(t.revenue_at_risk))}</td></tr>`).join("");
  return `<svg id="tier-chart" width="100%" height="18" role="img" aria-label="tier mix">${segs}</svg>
    <table><thead><tr><th>Tier</th><th class="num">Accounts</th><th class="num">Share</th><th class="num">Revenue at risk</th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

function rowsHtml(rows) {
  if (!rows.length) return `<tr><td colspan="9" class="muted">No account matches these filters.</td></tr>`;
  return rows.map((r) => `<tr data-id="${esc(r.customer_id)}">
    <td><a href="#account=${encodeURIComponent(r.customer_id)}">${esc(r.customer_id)}</a></td>
    <td class="num">${pct(r.churn_probability)}</td><td>${tierBadge(r.risk_tier)}</td>
    <td>${esc(r.lifecycle_stage ?? "—")}</td><td class="num">${days(r.days_to_renewal)}</td>
    <td class="num">${esc(money(r.expected_ltv))}</td><td class="num">${esc(money(r.revenue_at_risk))}</td>
    <td>${esc(r.main_driver ?? "—")}</td><td>${esc(r.playbook ?? "—")}</td></tr>`).join("");
}

async function showList() {
  const view = $("#view");
  view.innerHTML = `<div class="card">${filtersHtml()}</div><div id="list-body"><p class="muted">Loading...</p></div>`;
  const form = $("#filters");
  form.onsubmit = (ev) => { ev.preventDefault(); readFilters(form); loadList(); };
  form.onchange = (ev) => {
    if (ev.target.name === "attr") { readFilters(form); state.filters.level = ""; showList(); return; }
    if (ev.target.name !== "q" && ev.target.name !== "renewal") { readFilters(form); loadList(); }
  };
  $("#csv").onclick = () => download();
  await loadList();
}

async function loadList() {
  const body = $("#list-body");
  let data;
  try {
    data = await getJSON("/workspace/accounts?" + query({ offset: state.offset, limit: PAGE_SIZE }));
  } catch (e) {
    body.innerHTML = `<p class="error">${esc(e.message)}</p>`;
    return;
  }
  const s = data.summary;
  const end = Math.min(data.offset + data.rows.length, data.total);
  body.innerHTML = `<div class="grid">
    <div class="card"><h2>Revenue at risk by renewal month</h2>${monthChart(s)}
      <p class="muted">${s.no_renewal_date.customers.toLocaleString()} accounts without a renewal date
      (${esc(money(s.no_renewal_date.revenue_at_risk))} at risk).</p></div>
    <div class="card"><h2>Tier mix</h2><div class="stats"><div class="stat"><b id="total">${data.total.toLocaleString()}</b><span>accounts</span></div>
      <div class="stat"><b>${esc(money(s.revenue_at_risk))}</b><span>revenue at risk a year</span></div></div>${tierMix(s)}</div>
  </div>
  <div class="card"><h2>At-risk accounts</h2>
    <table id="accounts"><thead><tr><th>Account</th><th class="num">Churn prob.</th><th>Tier</th><th>Stage</th>
      <th class="num">Days to renewal</th><th class="num">Expected LTV</th><th class="num">Revenue at risk</th>
      <th>Main driver</th><th>Playbook</th></tr></thead><tbody>${rowsHtml(data.rows)}</tbody></table>
    <div class="pager"><button type="button" class="plain" id="prev"${data.offset ? "" : " disabled"}>Previous</button>
      <span id="range">${data.total ? data.offset + 1 : 0}–${end} of ${data.total.toLocaleString()}</span>
      <button type="button" class="plain" id="next"${end < data.total ? "" : " disabled"}>Next</button></div></div>`;
  $("#prev").onclick = () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); loadList(); };
  $("#next").onclick = () => { state.offset += PAGE_SIZE; loadList(); };
}

async function download() {
  const resp = await api("/workspace/accounts.csv?" + query());
  const blob = await resp.blob();
  const name = (resp.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name ? name[1] : "at-risk.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ------------------------------------------------------------------ the account page
function curveChart(curve, survival) {
  const w = 560, h = 260, left = 44, bottom = 28, top = 22, right = 22;
  const x = (d) => left + (w - left - right) * (d / 365);
  const y = (p) => top + (h - top - bottom) * (1 - p);
  const path = curve.map((c, i) => `${i ? "L" : "M"}${x(c.day).toFixed(1)},${y(c.survival).toFixed(1)}`).join("");
  const grid = [0, 0.25, 0.5, 0.75, 1].map((p) => `<line x1="${left}" x2="${w - right}" y1="${y(p)}" y2="${y(p)}" stroke="#eef1f4"/>
    <text x="${left - 6}" y="${y(p) + 4}" text-anchor="end">${p * 100}%</text>`).join("");
  const marks = Object.entries(survival).map(([d, p]) => `<circle cx="${x(+d)}" cy="${y(p)}" r="3.5" fill="#2457a6"/>
    <text x="${x(+d)}" y="${y(p) - 8}" text-anchor="middle">${pct(p)}</text>
    <text x="${x(+d)}" y="${h - 10}" text-anchor="middle">${d} d</text>`).join("");
  return `<svg id="survival-curve" viewBox="0 0 ${w} ${h}" width="100%" role="img"
    aria-label="survival curve">${grid}<path d="${path}" fill="none" stroke="#2457a6" stroke-width="2"/>${marks}</svg>`;
}

function driversHtml(drivers) {
  if (!drivers.length) return `<p class="muted">No feature raises this account's risk above the typical customer's.</p>`;
  const max = Math.max(...drivers.map((d) => Math.abs(d.contribution)));
  return `<table id="drivers"><thead><tr><th>Driver</th><th class="num">Contribution (log-odds)</th><th>Playbook</th></tr></thead><tbody>
    ${drivers.map((d) => `<tr><td>${esc(d.text)}</td><td class="num"><span class="bar-inline" style="width:${(60 * Math.abs(d.contribution)) / max}px"></span>${d.contribution >= 0 ? "+" : ""}${d.contribution.toFixed(3)}</td>
    <td>${esc(d.playbook)}</td></tr>`).join("")}</tbody></table>`;
}

function whatIfHtml(data) {
  const values = Object.fromEntries(data.features.map((f) => [f.name, f]));
  const inDrivers = data.record.drivers.map((d) => d.feature).filter((n) => META.editable.includes(n));
  const first = [...new Set(inDrivers)];
  const rest = META.editable.filter((n) => !first.includes(n));
  const input = (n) => `<label>${esc(META.labels[n] || n)}<input type="number" step="any" name="${esc(n)}"
    value="${values[n] && values[n].value != null ? values[n].value : ""}" data-old="${values[n] && values[n].value != null ? values[n].value : ""}"></label>`;
  return `<form id="whatif"><p class="muted">Change what the team can influence and re-score; the old risk stays beside the new.</p>
    <div class="whatif-grid">${first.map(input).join("")}</div>
    <details${first.length ? "" : " open"}><summary>More features (${rest.length})</summary><div class="whatif-grid">${rest.map(input).join("")}</div></details>
    <button type="submit">Score what-if</button><div id="whatif-result" class="result"></div></form>`;
}

async function runWhatIf(form, cid) {
  const changes = {};
  form.querySelectorAll("input[type=number]").forEach((el) => {
    if (el.value !== el.dataset.old) changes[el.name] = el.value === "" ? null : Number(el.value);
  });
  const out = $("#whatif-result");
  if (!Object.keys(changes).length) { out.innerHTML = `<span class="muted">Change a value first.</span>`; return; }
  try {
    const resp = await api("/what_if", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ customer_id: cid, changes }) });
    const r = await resp.json();
    const change = 100 * r.churn_probability_change;
    out.innerHTML = `Before <b id="whatif-before">${pct(r.before.churn_probability)}</b> ${tierBadge(r.before.risk_tier)}
      &nbsp;→&nbsp; after <b id="whatif-after">${pct(r.after.churn_probability)}</b> ${tierBadge(r.after.risk_tier)}
      <span class="muted">(${change >= 0 ? "+" : ""}${change.toFixed(1)} points; expected LTV ${esc(money(r.before.expected_ltv))} → ${esc(money(r.after.expected_ltv))})</span>`;
  } catch (e) {
    out.innerHTML = `<span class="error">${esc(e.message)}</span>`;
  }
}

async function showAccount(cid) {
  const view = $("#view");
  view.innerHTML = `<p class="muted">Loading ${esc(cid)}...</p>`;
  let data;
  try {
    data = await getJSON("/workspace/account/" + encodeURIComponent(cid));
  } catch (e) {
    view.innerHTML = `<p><a href="#">← At-risk list</a></p><p class="error">${esc(e.message)}</p>`;
    return;
  }
  const r = data.record;
  const features = data.features.map((f) => `<tr><td>${esc(f.label)}</td><td class="muted">${esc(f.group)}</td>
    <td class="num">${f.value == null ? "—" : esc(typeof f.value === "number" ? +f.value.toFixed(3) : f.value)}</td></tr>`).join("");
  view.innerHTML = `<p><a href="#">← At-risk list</a></p>
  <div class="card"><h2 id="account-id">${esc(r.customer_id)} ${tierBadge(r.risk_tier)}</h2><div class="stats">
    <div class="stat"><b id="probability">${pct(r.churn_probability)}</b><span>churn within ${r.horizon_days} days</span></div>
    <div class="stat"><b>${days(r.expected_remaining_days)} d</b><span>expected remaining lifetime</span></div>
    <div class="stat"><b>${esc(money(r.expected_ltv))}</b><span>expected LTV</span></div>
    <div class="stat"><b>${esc(money(data.revenue_at_risk))}</b><span>revenue at risk a year</span></div>
    <div class="stat"><b>${esc(r.lifecycle_stage ?? "—")}</b><span>lifecycle stage</span></div>
    <div class="stat"><b>${esc(r.as_of)}</b><span>as of · model ${esc(r.model.name)} v${esc(r.model.version)}</span></div></div></div>
  <div class="grid"><div class="card"><h2>Drivers and playbooks</h2>${driversHtml(r.drivers)}</div>
    <div class="card"><h2>Survival curve</h2>${curveChart(data.curve, r.survival)}</div></div>
  <div class="card"><h2>What if</h2>${whatIfHtml(data)}</div>
  <div class="card"><details open><summary>Feature values (${data.features.length})</summary>
    <table id="features"><thead><tr><th>Feature</th><th>Group</th><th class="num">Value</th></tr></thead><tbody>${features}</tbody></table></details></div>`;
  const form = $("#whatif");
  form.onsubmit = (ev) => { ev.preventDefault(); runWhatIf(form, r.customer_id); };
}

// ------------------------------------------------------------------ routing
function route() {
  const m = location.hash.match(/^#account=(.+)$/);
  return m ? showAccount(decodeURIComponent(m[1])) : showList();
}

async function start() {
  try {
    META = await getJSON("/workspace/meta");
  } catch (e) {
    $("#view").innerHTML = `<p class="error">${esc(e.message)}</p>`;
    return;
  }
  $("#snapshot").textContent = `${META.customers.toLocaleString()} accounts as of ${META.as_of} · model ${META.model.name} v${META.model.version}`;
  window.addEventListener("hashchange", route);
  await route();
}
start();
