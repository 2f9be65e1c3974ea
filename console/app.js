// The credit-operator console. Every figure comes from the HTTP API as a
// decimal string and is shown as given, with separators: nothing is
// recomputed in floating point here. Edits go through the API, which
// changes the desired state where it is kept (a manifest file standalone,
// the custom resource in a cluster).

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'credit-operator.token';
const PAGE_SIZE = 10;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  role: 'admin',
  account: null, // {namespace, name}
  overview: null,
  groups: [],
  group: null,
  search: '',
  page: 1,
  reqStatus: '',
  costBy: 'model',
  costCycle: null, // null: the current cycle
  costPage: 1,
  reqPage: 1,
  request: null,
  live: null,
};

// ---------- numbers ----------

/** A decimal string with thousands separators; the digits stay as given. */
export function formatAmount(text) {
  if (text === null || text === undefined) return '–';
  const s = String(text);
  const m = /^(-?)(\d+)(\.\d+)?$/.exec(s);
  if (!m) return s;
  const whole = m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${m[1]}${whole}${m[3] || ''}`;
}

/** The share `part / whole` as a 0–100 width for a bar (drawing only). */
function barWidth(part, whole) {
  const w = Number(whole);
  if (!(w > 0)) return 0;
  return Math.max(0, Math.min(100, (Number(part) / w) * 100));
}

function when(ts) {
  if (!ts) return '–';
  const d = new Date(ts);
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** Time to `ts` by the ledger's clock: its `asOf`, plus what passed here since. */
function until(ts, asOf, fetchedAt) {
  const now = new Date(asOf).getTime() + (Date.now() - fetchedAt);
  const ms = new Date(ts).getTime() - now;
  if (ms <= 0) return 'resetting now';
  const m = Math.floor(ms / 60000);
  const d = Math.floor(m / 1440);
  const h = Math.floor((m % 1440) / 60);
  const mm = m % 60;
  if (d > 0) return `resets in ${d} d ${h} h`;
  if (h > 0) return `resets in ${h} h ${mm} min`;
  return `resets in ${mm} min`;
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

function base() {
  const a = state.account;
  return `/v1/namespaces/${encodeURIComponent(a.namespace)}/accounts/${encodeURIComponent(a.name)}`;
}

// ---------- small DOM helpers ----------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

let bannerTimer = null;
function banner(message, kind = 'ok') {
  const b = $('banner');
  b.textContent = message;
  b.className = `banner ${kind}`;
  b.hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => { b.hidden = true; }, 8000);
}

function showError(id, err) {
  const target = $(id);
  if (target) target.textContent = err ? (err.message || String(err)) : '';
}

/** Asks for confirmation in a modal; resolves true on the OK button. */
function confirmDialog(title, body, okLabel = 'Apply change', danger = false) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  const holder = $('confirm-body');
  holder.replaceChildren(...body.map((line) => el('p', { text: line })));
  const ok = $('confirm-ok');
  ok.textContent = okLabel;
  ok.className = danger ? 'danger' : '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

// ---------- tabs ----------

const TABS = ['overview', 'allocations', 'requests', 'settings', 'cost'];

function selectTab(name, focus = false) {
  for (const t of TABS) {
    const tab = $(`tab-${t}`);
    const on = t === name;
    tab.setAttribute('aria-selected', on ? 'true' : 'false');
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
}

function wireTabs() {
  TABS.forEach((t, i) => {
    const tab = $(`tab-${t}`);
    tab.addEventListener('click', () => selectTab(t));
    tab.addEventListener('keydown', (e) => {
      let next = null;
      if (e.key === 'ArrowRight') next = TABS[(i + 1) % TABS.length];
      if (e.key === 'ArrowLeft') next = TABS[(i + TABS.length - 1) % TABS.length];
      if (e.key === 'Home') next = TABS[0];
      if (e.key === 'End') next = TABS[TABS.length - 1];
      if (next) { e.preventDefault(); selectTab(next, true); }
    });
  });
  $('ov-pending-link').addEventListener('click', (e) => { e.preventDefault(); selectTab('requests', true); });
}

// ---------- overview ----------

function renderOverview() {
  const o = state.overview;
  if (!o) return;
  $('ov-cycle').textContent = `Cycle ${o.cycle.number}`;
  $('ov-cycle-dates').textContent = `${when(o.cycle.start)} → ${when(o.cycle.end)}`;
  $('ov-reset-in').textContent = until(o.cycle.end, o.asOf, state.fetchedAt);
  $('ov-balance').textContent = formatAmount(o.balance);
  $('ov-limit').textContent = formatAmount(o.creditsPerCycle);
  $('ov-percent').textContent = `${o.usagePercent}%`;
  $('ov-used').textContent = formatAmount(o.used);
  $('ov-meter').style.width = `${Math.min(100, Number(o.usagePercent))}%`;
  $('ov-meter').className = Number(o.usagePercent) >= 100 ? 'over' : Number(o.usagePercent) >= 80 ? 'high' : '';
  $('ov-unallocated').textContent = formatAmount(o.unallocated);
  $('ov-allocated').textContent = formatAmount(o.allocated);
  $('ov-pending').textContent = String(o.pendingRequests);
  $('tracking-off').hidden = o.trackingEnabled;
  $('set-used').textContent = formatAmount(o.used);
  $('cadence-now').textContent = cadenceLabel(o.settings.cadence);
  renderChart(o);
  renderSettings(o);
}

function renderChart(o) {
  const holder = $('ov-chart');
  const ns = 'http://www.w3.org/2000/svg';
  const rows = o.groups;
  const rowH = 44;
  const width = 640;
  const labelW = 150;
  const barW = width - labelW - 10;
  const max = rows.reduce((m, g) => Math.max(m, Number(g.budget), Number(g.used)), 0);
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${Math.max(1, rows.length) * rowH + 10}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-labelledby', 'chart-title chart-desc');
  const title = document.createElementNS(ns, 'title');
  title.id = 'chart-title';
  title.textContent = 'Allocation overview per group';
  const desc = document.createElementNS(ns, 'desc');
  desc.id = 'chart-desc';
  desc.textContent = rows.map((g) => `${g.name}: budget ${formatAmount(g.budget)}, used ${formatAmount(g.used)}`).join('; ');
  svg.append(title, desc);
  rows.forEach((g, i) => {
    const y = i * rowH + 6;
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', '0');
    label.setAttribute('y', String(y + 16));
    label.setAttribute('class', 'chart-label');
    label.textContent = g.name;
    const sub = document.createElementNS(ns, 'text');
    sub.setAttribute('x', '0');
    sub.setAttribute('y', String(y + 32));
    sub.setAttribute('class', 'chart-sub');
    sub.textContent = `${formatAmount(g.used)} / ${formatAmount(g.budget)}`;
    const track = document.createElementNS(ns, 'rect');
    const budgetW = barWidth(g.budget, max) / 100 * barW;
    track.setAttribute('x', String(labelW));
    track.setAttribute('y', String(y + 6));
    track.setAttribute('width', String(Math.max(2, budgetW)));
    track.setAttribute('height', '22');
    track.setAttribute('rx', '4');
    track.setAttribute('class', 'chart-budget');
    const used = document.createElementNS(ns, 'rect');
    used.setAttribute('x', String(labelW));
    used.setAttribute('y', String(y + 6));
    used.setAttribute('width', String(barWidth(g.used, max) / 100 * barW));
    used.setAttribute('height', '22');
    used.setAttribute('rx', '4');
    used.setAttribute('class', Number(g.used) > Number(g.budget) ? 'chart-used over' : 'chart-used');
    svg.append(label, sub, track, used);
  });
  const legend = el('p', { class: 'legend' },
    el('span', { class: 'swatch budget', 'aria-hidden': 'true' }), ' Budget ',
    el('span', { class: 'swatch used', 'aria-hidden': 'true' }), ' Used');
  holder.replaceChildren(svg, legend);
}

// ---------- allocations ----------

/**
 * A cell that edits in place: click (or Enter) turns it into an input; a
 * changed value shows "Unsaved" and a Save button until saved.
 */
function editableCell(label, value, save) {
  const td = el('td', { class: 'num editable', 'data-label': label });
  const show = () => {
    const btn = el('button', { type: 'button', class: 'cell-value', 'aria-label': `${label}: ${formatAmount(value)}. Edit`, text: formatAmount(value) });
    btn.addEventListener('click', (e) => { e.stopPropagation(); edit(); });
    td.classList.remove('editing', 'unsaved');
    td.replaceChildren(btn);
  };
  const edit = () => {
    if (state.role !== 'admin') return;
    const input = el('input', { class: 'cell-input', value, 'aria-label': label, inputmode: 'decimal', autocomplete: 'off' });
    const badge = el('span', { class: 'badge unsaved', text: 'Unsaved', hidden: true });
    const saveBtn = el('button', { type: 'button', class: 'icon save', 'aria-label': `Save ${label}`, title: 'Save', text: '✓', hidden: true });
    const cancelBtn = el('button', { type: 'button', class: 'icon', 'aria-label': 'Cancel', title: 'Cancel', text: '✕' });
    const error = el('span', { class: 'field-error', role: 'alert' });
    const changed = () => {
      const dirty = input.value.trim() !== String(value);
      badge.hidden = !dirty;
      saveBtn.hidden = !dirty;
      td.classList.toggle('unsaved', dirty);
    };
    const commit = async () => {
      const text = input.value.trim();
      if (text === String(value)) { show(); return; }
      saveBtn.disabled = true;
      try {
        await save(text);
      } catch (err) {
        error.textContent = err.message;
        input.setAttribute('aria-invalid', 'true');
        saveBtn.disabled = false;
      }
    };
    input.addEventListener('input', changed);
    input.addEventListener('click', (e) => e.stopPropagation());
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); commit(); }
      if (e.key === 'Escape') { e.preventDefault(); show(); }
    });
    saveBtn.addEventListener('click', (e) => { e.stopPropagation(); commit(); });
    cancelBtn.addEventListener('click', (e) => { e.stopPropagation(); show(); });
    td.classList.add('editing');
    td.replaceChildren(input, badge, saveBtn, cancelBtn, error);
    input.focus();
    input.select();
  };
  show();
  return td;
}

function plainCell(label, value, cls = 'num') {
  return el('td', { class: cls, 'data-label': label, text: value });
}

function renderGroups() {
  const body = $('groups-table').querySelector('tbody');
  const rows = state.groups.map((g) => {
    const saveGroup = (key, label) => async (text) => {
      const updated = await api('PATCH', `${base()}/groups/${encodeURIComponent(g.name)}`, { [key]: text });
      banner(`Saved: group ${g.name} ${label} is now ${formatAmount(text)}. Available ${formatAmount(updated.available)}.`);
      await loadAll();
    };
    const tr = el('tr', { class: state.group === g.name ? 'selected' : '', 'aria-selected': state.group === g.name ? 'true' : 'false' });
    const open = el('button', { type: 'button', class: 'link', text: g.name, 'aria-label': `Show members of ${g.name}` });
    open.addEventListener('click', () => openGroup(g.name));
    tr.append(
      el('th', { scope: 'row', 'data-label': 'Group' }, open),
      plainCell('Members', String(g.members)),
      state.role === 'admin' ? editableCell('Monthly', g.monthlyCredits, saveGroup('monthlyCredits', 'monthly credits')) : plainCell('Monthly', formatAmount(g.monthlyCredits)),
      state.role === 'admin' ? editableCell('Extra', g.extraCredits, saveGroup('extraCredits', 'extra credits')) : plainCell('Extra', formatAmount(g.extraCredits)),
      plainCell('Distributed', formatAmount(g.distributed)),
      plainCell('Available', formatAmount(g.available), Number(g.available) < 0 ? 'num negative' : 'num'),
      plainCell('Used', formatAmount(g.used)),
      state.role === 'admin' ? editableCell('Auto-Approve', g.autoApproveReserve, saveGroup('autoApproveReserve', 'auto-approve reserve')) : plainCell('Auto-Approve', formatAmount(g.autoApproveReserve)),
      el('td', { 'data-label': 'Actions' }, (() => {
        const b = el('button', { type: 'button', class: 'secondary small', text: 'Members' });
        b.addEventListener('click', () => openGroup(g.name));
        return b;
      })()),
    );
    tr.addEventListener('click', (e) => { if (e.target === tr || e.target.tagName === 'TD') openGroup(g.name); });
    return tr;
  });
  body.replaceChildren(...rows);
}

function titleCase(name) {
  return name ? name.charAt(0).toUpperCase() + name.slice(1) : name;
}

async function openGroup(name) {
  if (state.group !== name) {
    state.group = name;
    state.search = '';
    state.page = 1;
    $('member-search').value = '';
  }
  $('members-card').hidden = false;
  $('members-title').textContent = `Members of ${name}`;
  const placeholder = `Search members in ${titleCase(name)}…`;
  $('member-search').placeholder = placeholder;
  $('search-label').textContent = placeholder;
  renderGroups();
  await loadMembers();
}

async function loadMembers() {
  if (!state.group) return;
  const q = new URLSearchParams({ page: String(state.page), pageSize: String(PAGE_SIZE) });
  if (state.search) q.set('search', state.search);
  let data;
  try {
    data = await api('GET', `${base()}/groups/${encodeURIComponent(state.group)}/members?${q}`);
  } catch (err) {
    if (err.status === 404) { state.group = null; $('members-card').hidden = true; return; }
    throw err;
  }
  const body = $('members-table').querySelector('tbody');
  const rows = data.items.map((m) => {
    const saveMember = (key, label) => async (text) => {
      const updated = await api('PATCH', `${base()}/members/${encodeURIComponent(m.user.id)}`, { [key]: text });
      banner(`Saved: ${m.user.name}'s ${label} are now ${formatAmount(text)}. Remaining ${formatAmount(updated.remaining)}.`);
      await loadAll();
    };
    const tr = el('tr');
    tr.append(
      el('th', { scope: 'row', 'data-label': 'Member' }, el('span', { class: 'who-name', text: m.user.name }), el('br'), el('span', { class: 'muted', text: m.user.email })),
      state.role === 'admin' ? editableCell('Monthly', m.monthlyCredits, saveMember('monthlyCredits', 'monthly credits')) : plainCell('Monthly', formatAmount(m.monthlyCredits)),
      state.role === 'admin' ? editableCell('Extra', m.extraCredits, saveMember('extraCredits', 'extra credits')) : plainCell('Extra', formatAmount(m.extraCredits)),
      plainCell('Granted', formatAmount(m.granted)),
      plainCell('Used', formatAmount(m.used)),
      plainCell('Remaining', formatAmount(m.remaining), Number(m.remaining) < 0 ? 'num negative' : 'num'),
    );
    tr.addEventListener('click', () => {
      for (const r of body.querySelectorAll('tr')) r.classList.remove('selected');
      tr.classList.add('selected');
    });
    return tr;
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: '6', class: 'empty', text: state.search ? 'No member matches.' : 'No members in this group.' })));
  body.replaceChildren(...rows);
  const first = data.total === 0 ? 0 : (data.page - 1) * data.pageSize + 1;
  const last = Math.min(data.total, data.page * data.pageSize);
  $('pager-text').textContent = `${first}–${last} of ${data.total}`;
  $('pager-prev').disabled = data.page <= 1;
  $('pager-next').disabled = last >= data.total;
}

function wireAllocations() {
  let timer = null;
  $('member-search').addEventListener('input', (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.search = e.target.value.trim(); state.page = 1; loadMembers().catch(fail); }, 200);
  });
  $('pager-prev').addEventListener('click', () => { state.page = Math.max(1, state.page - 1); loadMembers().catch(fail); });
  $('pager-next').addEventListener('click', () => { state.page += 1; loadMembers().catch(fail); });
  $('enrol-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = e.target;
    showError('enrol-error', null);
    try {
      const m = await api('POST', `${base()}/members`, {
        user: { id: f.id.value.trim(), email: f.email.value.trim(), name: f.name.value.trim() },
        group: state.group,
      });
      f.reset();
      banner(`Enrolled ${m.user.name} in ${m.group} with ${formatAmount(m.remaining)} credits remaining.`);
      await loadAll();
    } catch (err) {
      showError('enrol-error', err);
    }
  });
}

// ---------- requests ----------

const PHASE_LABEL = { Pending: 'Pending', Approved: 'Approved', Denied: 'Denied', AutoApproved: 'Auto-Approved' };

async function loadRequests() {
  const q = new URLSearchParams({ page: String(state.reqPage), pageSize: String(PAGE_SIZE) });
  if (state.reqStatus) q.set('status', state.reqStatus);
  const data = await api('GET', `${base()}/requests?${q}`);
  const body = $('requests-table').querySelector('tbody');
  const rows = data.items.map((r) => {
    const tr = el('tr', { 'data-name': r.name, class: state.request && state.request.name === r.name ? 'selected' : '', tabindex: '0', 'aria-selected': state.request && state.request.name === r.name ? 'true' : 'false' });
    const who = r.user ? [el('span', { class: 'who-name', text: r.user.name }), el('br'), el('span', { class: 'muted', text: r.user.email })] : [el('span', { text: r.member })];
    tr.append(
      el('th', { scope: 'row', 'data-label': 'Requester' }, ...who),
      plainCell('Requested', formatAmount(r.credits)),
      plainCell('Approved', r.approvedCredits ? formatAmount(r.approvedCredits) : '–'),
      plainCell('Reason', r.reason, 'reason'),
      plainCell('Submitted', when(r.submittedAt), ''),
      el('td', { 'data-label': 'Status' }, el('span', { class: `badge phase-${r.phase}`, text: PHASE_LABEL[r.phase] || r.phase })),
    );
    const pick = () => selectRequest(r);
    tr.addEventListener('click', pick);
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pick(); } });
    return tr;
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: '6', class: 'empty', text: 'No requests.' })));
  body.replaceChildren(...rows);
  const first = data.total === 0 ? 0 : (data.page - 1) * data.pageSize + 1;
  const last = Math.min(data.total, data.page * data.pageSize);
  $('req-pager-text').textContent = `${first}–${last} of ${data.total}`;
  $('req-prev').disabled = data.page <= 1;
  $('req-next').disabled = last >= data.total;
  if (state.request) {
    const fresh = data.items.find((r) => r.name === state.request.name);
    if (fresh) renderDecision(fresh);
  }
}

function selectRequest(r) {
  state.request = r;
  for (const tr of $('requests-table').querySelectorAll('tbody tr')) {
    const on = tr.dataset.name === r.name;
    tr.classList.toggle('selected', on);
    tr.setAttribute('aria-selected', on ? 'true' : 'false');
  }
  renderDecision(r);
  $('approve-credits').value = r.credits;
  $('deny-reason').value = '';
  showError('decide-error', null);
}

function renderDecision(r) {
  state.request = r;
  $('decide-card').hidden = false;
  const who = r.user ? `${r.user.name} <${r.user.email}>` : r.member;
  $('decide-title').textContent = `Request ${r.name}`;
  $('decide-summary').textContent = `${who} asks for ${formatAmount(r.credits)} credits: “${r.reason}”. Status: ${PHASE_LABEL[r.phase] || r.phase}.`;
  const decided = r.decidedAt
    ? `Decided by ${r.decidedBy || 'the reserve'} on ${when(r.decidedAt)}${r.approvedCredits ? `, ${formatAmount(r.approvedCredits)} credits approved` : ''}.`
    : '';
  $('decide-decided').textContent = decided;
  $('decide-actions').hidden = r.phase !== 'Pending' || state.role !== 'admin';
}

function wireRequests() {
  $('status-filter').addEventListener('change', (e) => { state.reqStatus = e.target.value; state.reqPage = 1; loadRequests().catch(fail); });
  $('req-prev').addEventListener('click', () => { state.reqPage = Math.max(1, state.reqPage - 1); loadRequests().catch(fail); });
  $('req-next').addEventListener('click', () => { state.reqPage += 1; loadRequests().catch(fail); });
  $('approve-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const r = state.request;
    const credits = $('approve-credits').value.trim();
    showError('decide-error', null);
    try {
      const out = await api('POST', `${base()}/requests/${encodeURIComponent(r.name)}/approve`, credits ? { credits } : {});
      banner(`Approved ${formatAmount(out.approvedCredits)} credits for ${out.user ? out.user.name : out.member}.`);
      renderDecision(out);
      await loadAll();
    } catch (err) { showError('decide-error', err); }
  });
  $('deny-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const r = state.request;
    const reason = $('deny-reason').value.trim();
    showError('decide-error', null);
    if (!reason) { showError('decide-error', new Error('reason: is required: say why')); $('deny-reason').focus(); return; }
    try {
      const out = await api('POST', `${base()}/requests/${encodeURIComponent(r.name)}/deny`, { reason });
      banner(`Denied the request of ${out.user ? out.user.name : out.member}.`);
      renderDecision(out);
      await loadAll();
    } catch (err) { showError('decide-error', err); }
  });
}

// ---------- settings ----------

const CADENCES = { CalendarMonth: 'Calendar month', '15d': '15 days', '1w': '1 week', '1d': '1 day', '12h': '12 hours', '1h': '1 hour' };

function cadenceLabel(c) {
  return CADENCES[c] || c;
}

let settingsShown = null;
function renderSettings(o) {
  // Keep what an admin is typing; refresh the fields when the settings moved.
  const key = JSON.stringify(o.settings);
  if (settingsShown === key) return;
  settingsShown = key;
  $('credits-per-cycle').value = o.settings.creditsPerCycle;
  $('credit-factor').value = o.settings.creditFactor;
  $('signup-credits').value = o.settings.signupCredits;
  $('timezone').value = o.settings.timezone;
  const known = Object.prototype.hasOwnProperty.call(CADENCES, o.settings.cadence);
  $('cadence').value = known ? o.settings.cadence : 'custom';
  $('cadence-custom').value = known ? '' : o.settings.cadence;
  toggleCustom();
}

function toggleCustom() {
  const custom = $('cadence').value === 'custom';
  $('cadence-custom').hidden = !custom;
  $('cadence-custom-label').hidden = !custom;
}

async function saveSetting(key, value, errorId) {
  showError(errorId, null);
  try {
    const o = await api('PATCH', `${base()}/settings`, { [key]: value });
    state.overview = o;
    state.fetchedAt = Date.now();
    settingsShown = null;
    renderOverview();
    await loadAll();
    return o;
  } catch (err) {
    showError(errorId, err);
    return null;
  }
}

function wireSettings() {
  $('limit-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const value = $('credits-per-cycle').value.trim();
    const o = state.overview;
    const ok = await confirmDialog('Apply the new account credit limit?', [
      `Credits per cycle: ${formatAmount(o.settings.creditsPerCycle)} → ${formatAmount(value)}.`,
      'This change takes effect immediately for the current cycle.',
      `Credits already used (${formatAmount(o.used)}) remain unchanged; available credits are recalculated right away.`,
    ]);
    if (!ok) { $('credits-per-cycle').value = o.settings.creditsPerCycle; return; }
    if (await saveSetting('creditsPerCycle', value, 'credits-per-cycle-error')) banner(`Saved: credits per cycle are now ${formatAmount(value)}.`);
  });
  $('cadence').addEventListener('change', toggleCustom);
  $('cadence-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const pick = $('cadence').value;
    const value = pick === 'custom' ? $('cadence-custom').value.trim() : pick;
    const o = state.overview;
    const ok = await confirmDialog('Change the cycle cadence?', [
      `Cycle cadence: ${cadenceLabel(o.settings.cadence)} → ${cadenceLabel(value)}.`,
      `A change starts a fresh cycle immediately: cycle ${o.cycle.number} closes now and cycle ${o.cycle.number + 1} begins with nothing used.`,
    ]);
    if (!ok) { settingsShown = null; renderSettings(o); return; }
    const out = await saveSetting('cadence', value, 'cadence-error');
    if (out) banner(`Saved: the cadence is now ${cadenceLabel(out.settings.cadence)}; cycle ${out.cycle.number} has started.`);
  });
  const simple = (form, input, key, label, errorId) => {
    $(form).addEventListener('submit', async (e) => {
      e.preventDefault();
      const value = $(input).value.trim();
      if (await saveSetting(key, value, errorId)) banner(`Saved: ${label} is now ${key === 'timezone' ? value : formatAmount(value)}.`);
    });
  };
  simple('timezone-form', 'timezone', 'timezone', 'the time zone', 'timezone-error');
  simple('factor-form', 'credit-factor', 'creditFactor', 'the credit factor', 'credit-factor-error');
  simple('signup-form', 'signup-credits', 'signupCredits', 'the signup credits', 'signup-credits-error');
  $('reset-now').addEventListener('click', async () => {
    const a = state.account;
    const ok = await confirmDialog(`Reset the cycle of ${a.namespace}/${a.name} now?`, [
      'This starts a fresh cycle immediately. Credits used in the current cycle reset to zero, and the next cycle end is recalculated from this moment.',
      'This cannot be undone.',
    ], 'Reset cycle now', true);
    if (!ok) return;
    showError('reset-error', null);
    try {
      const c = await api('POST', `${base()}/reset`, {});
      banner(`Cycle ${c.number} started; it ends ${when(c.end)}.`);
      await loadAll();
    } catch (err) { showError('reset-error', err); }
  });
}

// ---------- cost ----------

const COST_BY = { model: 'Model', provider: 'Provider', group: 'Group', member: 'Member' };

/** Horizontal bars of credits per key (the first page's rows). */
function renderCostChart(data) {
  const holder = $('cost-chart');
  const ns = 'http://www.w3.org/2000/svg';
  const rows = data.items;
  if (rows.length === 0) {
    holder.replaceChildren(el('p', { class: 'empty', text: 'No usage in this cycle yet.' }));
    return;
  }
  const rowH = 34;
  const width = 640;
  const labelW = 190;
  const barW = width - labelW - 120;
  const max = rows.reduce((m, r) => Math.max(m, Number(r.credits)), 0);
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${rows.length * rowH + 6}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-labelledby', 'cost-chart-title cost-chart-desc');
  const title = document.createElementNS(ns, 'title');
  title.id = 'cost-chart-title';
  title.textContent = `Credits by ${COST_BY[data.groupBy].toLowerCase()}`;
  const desc = document.createElementNS(ns, 'desc');
  desc.id = 'cost-chart-desc';
  desc.textContent = rows.map((r) => `${r.label || r.key}: ${formatAmount(r.credits)} credits, $${formatAmount(r.costUsd)}`).join('; ');
  svg.append(title, desc);
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', '0');
    label.setAttribute('y', String(y + 19));
    label.setAttribute('class', 'chart-label');
    const name = r.label || r.key;
    label.textContent = name.length > 24 ? `${name.slice(0, 23)}…` : name;
    const bar = document.createElementNS(ns, 'rect');
    bar.setAttribute('x', String(labelW));
    bar.setAttribute('y', String(y + 5));
    bar.setAttribute('width', String(Math.max(2, barWidth(r.credits, max) / 100 * barW)));
    bar.setAttribute('height', '20');
    bar.setAttribute('rx', '4');
    bar.setAttribute('class', 'chart-used');
    const value = document.createElementNS(ns, 'text');
    value.setAttribute('x', String(labelW + Math.max(2, barWidth(r.credits, max) / 100 * barW) + 8));
    value.setAttribute('y', String(y + 19));
    value.setAttribute('class', 'chart-sub');
    value.textContent = formatAmount(r.credits);
    svg.append(label, bar, value);
  });
  holder.replaceChildren(svg);
}

function renderCostCycles() {
  const o = state.overview;
  if (!o) return;
  const pick = $('cost-cycle');
  const current = o.cycle.number;
  const wanted = state.costCycle === null ? String(current) : String(state.costCycle);
  const options = [];
  for (let n = current; n >= 1 && n > current - 24; n -= 1) {
    options.push(el('option', { value: String(n), text: n === current ? `Cycle ${n} (current)` : `Cycle ${n}` }));
  }
  pick.replaceChildren(...options);
  pick.value = wanted;
}

async function loadCosts() {
  const q = new URLSearchParams({ groupBy: state.costBy, page: String(state.costPage), pageSize: String(PAGE_SIZE) });
  if (state.costCycle !== null) q.set('cycle', String(state.costCycle));
  const data = await api('GET', `${base()}/costs?${q}`);
  renderCostCycles();
  const by = COST_BY[data.groupBy];
  $('cost-title').textContent = `Cost by ${by.toLowerCase()}`;
  $('cost-key-head').textContent = by;
  $('cost-window').textContent = `Cycle ${data.cycle.number}: ${when(data.cycle.start)} → ${when(data.cycle.end)}`;
  $('cost-credits').textContent = formatAmount(data.total.credits);
  $('cost-usd').textContent = `$${formatAmount(data.total.costUsd)}`;
  $('cost-events').textContent = formatAmount(String(data.total.events));
  renderCostChart(data);
  const rows = data.items.map((r) => {
    const key = r.label
      ? [el('span', { class: 'who-name', text: r.label }), el('br'), el('span', { class: 'muted', text: r.key })]
      : [el('span', { text: r.key })];
    return el('tr', { 'data-key': r.key },
      el('th', { scope: 'row', 'data-label': by }, ...key),
      plainCell('Credits', formatAmount(r.credits)),
      plainCell('Cost (USD)', `$${formatAmount(r.costUsd)}`),
      plainCell('Events', formatAmount(String(r.events))));
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: '4', class: 'empty', text: 'No usage in this cycle yet.' })));
  $('cost-table').querySelector('tbody').replaceChildren(...rows);
  const first = data.count === 0 ? 0 : (data.page - 1) * data.pageSize + 1;
  const last = Math.min(data.count, data.page * data.pageSize);
  $('cost-pager-text').textContent = `${first}–${last} of ${data.count}`;
  $('cost-prev').disabled = data.page <= 1;
  $('cost-next').disabled = last >= data.count;
}

function wireCost() {
  $('cost-by').addEventListener('change', () => {
    state.costBy = $('cost-by').value;
    state.costPage = 1;
    loadCosts().catch(fail);
  });
  $('cost-cycle').addEventListener('change', () => {
    const n = Number($('cost-cycle').value);
    state.costCycle = state.overview && n === state.overview.cycle.number ? null : n;
    state.costPage = 1;
    loadCosts().catch(fail);
  });
  $('cost-prev').addEventListener('click', () => { state.costPage = Math.max(1, state.costPage - 1); loadCosts().catch(fail); });
  $('cost-next').addEventListener('click', () => { state.costPage += 1; loadCosts().catch(fail); });
}

// ---------- loading, live updates, sign-in ----------

function fail(err) {
  if (err && err.status === 401) { signIn('Your token was not accepted. Sign in again.'); return; }
  banner(err && err.message ? err.message : String(err), 'error');
}

async function loadAll() {
  const [overview, groups] = await Promise.all([
    api('GET', `${base()}/overview`),
    api('GET', `${base()}/groups`),
  ]);
  state.overview = overview;
  state.fetchedAt = Date.now();
  state.groups = groups.items;
  renderOverview();
  renderGroups();
  await Promise.all([loadMembers(), loadRequests(), loadCosts()]);
}

/** Follows `GET …/events` (read with fetch, so the token stays a header). */
async function follow() {
  if (state.live) state.live.abort();
  const controller = new AbortController();
  state.live = controller;
  const headers = { Accept: 'text/event-stream' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let seen = null;
  while (!controller.signal.aborted) {
    try {
      const res = await fetch(`${base()}/events`, { headers, signal: controller.signal });
      if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const chunk = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = chunk.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('');
          if (chunk.includes('event: changed') || chunk.includes('event:changed')) {
            if (seen !== null && data !== seen) await loadAll().catch(() => {});
            seen = data;
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function signIn(message) {
  delete document.body.dataset.ready;
  $('app').hidden = true;
  $('sign-in').hidden = false;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  showError('sign-in-error', message ? new Error(message) : null);
  $('token').focus();
}

async function start() {
  let me;
  try {
    me = await api('GET', '/v1/whoami');
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = '';
      signIn(null);
      $('account-line').textContent = 'Sign in to see the figures';
      return;
    }
    $('account-line').textContent = `Cannot reach the API: ${err.message}`;
    return;
  }
  state.role = me.role;
  $('who').textContent = `${me.name} (${me.role})`;
  $('sign-out').hidden = !state.token;
  $('sign-in').hidden = true;
  $('read-only').hidden = me.role === 'admin';
  document.body.classList.toggle('read-only', me.role !== 'admin');
  for (const id of ['limit-form', 'cadence-form', 'timezone-form', 'factor-form', 'signup-form', 'reset-now', 'enrol']) {
    const e = $(id);
    if (me.role !== 'admin') e.setAttribute('hidden', '');
    else e.removeAttribute('hidden');
  }
  const accounts = await api('GET', '/v1/accounts');
  if (accounts.items.length === 0) {
    $('account-line').textContent = 'No CreditAccount yet: add one to the manifests.';
    return;
  }
  const pick = $('account-pick');
  pick.replaceChildren(...accounts.items.map((a, i) => el('option', { value: String(i), text: `${a.namespace}/${a.name}` })));
  $('account-pick-label').hidden = accounts.items.length < 2;
  const chosen = () => {
    state.account = accounts.items[Number(pick.value) || 0];
    $('account-line').textContent = `Account ${state.account.name} · namespace ${state.account.namespace}`;
    state.group = null;
    $('members-card').hidden = true;
    state.request = null;
    $('decide-card').hidden = true;
    state.costCycle = null;
    state.costPage = 1;
  };
  chosen();
  pick.onchange = async () => { chosen(); await loadAll().catch(fail); follow(); };
  $('app').hidden = false;
  const tab = location.hash.slice(1);
  selectTab(TABS.includes(tab) ? tab : 'overview');
  await loadAll();
  const first = state.groups.find((g) => g.name === state.overview.settings.defaultGroup) || state.groups[0];
  if (first) await openGroup(first.name);
  follow();
  setInterval(() => { if (state.overview) $('ov-reset-in').textContent = until(state.overview.cycle.end, state.overview.asOf, state.fetchedAt); }, 30000);
  document.body.dataset.ready = 'true';
}

function wire() {
  wireTabs();
  wireAllocations();
  wireRequests();
  wireSettings();
  wireCost();
  $('refresh').addEventListener('click', () => loadAll().then(() => banner('Refreshed.')).catch(fail));
  $('sign-in-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = $('token').value.trim();
    state.token = token;
    try {
      await api('GET', '/v1/whoami');
    } catch (err) {
      state.token = '';
      showError('sign-in-error', err.status === 401 ? new Error('This token is not accepted.') : err);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    await start().catch(fail);
  });
  $('sign-out').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    if (state.live) state.live.abort();
    signIn(null);
  });
}

wire();
start().catch(fail);
