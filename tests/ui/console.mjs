// The web console in a real headless Chromium: every flow of the console
// against the real binary (standalone, a copy of examples/, an SQLite
// ledger, a clock file), checked against the HTTP API and the manifest
// files. Usage: node tests/ui/console.mjs PATH_TO_BINARY [SCREENSHOT_DIR]
//
// Prints one line per test and closes with `N passed` (exit 1 on any
// failure).

import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import net from 'node:net';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const binary = resolve(process.argv[2] || join(root, 'target/release/credit-operator'));
const shots = process.argv[3] ? resolve(process.argv[3]) : null;
const NOW = '2026-12-10T09:30:00Z';
const NS = 'ml-platform';
const ACCOUNT = 'acme';
const A = `/v1/namespaces/${NS}/accounts/${ACCOUNT}`;
const ADMIN_TOKEN = 'admin-token-0123456789abcdef';
const GATEWAY_TOKEN = 'gateway-token-0123456789abcdef';

function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
    s.on('error', fail);
  });
}

/** The real binary on a fresh copy of examples/. */
async function startServer({ tokens = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'credits-ui-'));
  const manifests = join(dir, 'manifests');
  cpSync(join(root, 'examples'), manifests, { recursive: true });
  writeFileSync(join(dir, 'clock'), `${NOW}\n`);
  const port = await freePort();
  const args = ['standalone', '--manifests', manifests, '--ledger', `sqlite://${join(dir, 'credits.db')}`,
    '--listen', `127.0.0.1:${port}`, '--settle-ms', '50', '--poll-interval-ms', '100', '--clock-file', join(dir, 'clock')];
  if (tokens) {
    writeFileSync(join(dir, 'tokens'), `${ADMIN_TOKEN} admin alice\n${GATEWAY_TOKEN} gateway gw\n`);
    args.push('--token-file', join(dir, 'tokens'));
  }
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const url = `http://127.0.0.1:${port}`;
  const server = {
    url, dir, manifests, child, token: tokens ? ADMIN_TOKEN : null,
    log: () => log,
    async api(method, path, body, token = server.token) {
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      const res = await fetch(url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    },
    async get(path) {
      const r = await server.api('GET', path);
      assert.equal(r.status, 200, `GET ${path}: ${JSON.stringify(r.body)}`);
      return r.body;
    },
    file(rel) { return readFileSync(join(manifests, rel), 'utf8'); },
    stop() { child.kill('SIGTERM'); rmSync(dir, { recursive: true, force: true }); },
  };
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.ok) return server;
    } catch { /* not yet */ }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  server.stop();
  throw new Error(`the server did not start:\n${log}`);
}

let browser;

async function open(server, { width = 1280, height = 900, token = null } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`); });
  page.problems = problems;
  await page.goto(server.url + '/');
  if (token) {
    await page.getByLabel('Bearer token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
  await page.waitForSelector('body[data-ready="true"]');
  return page;
}

function fmt(text) {
  const m = /^(-?)(\d+)(\.\d+)?$/.exec(String(text));
  return m ? `${m[1]}${m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ',')}${m[3] || ''}` : String(text);
}

function changedLines(before, after) {
  const a = before.split('\n');
  const b = after.split('\n');
  assert.equal(a.length, b.length, `line count changed:\n${after}`);
  return a.map((line, i) => [line, b[i]]).filter(([x, y]) => x !== y);
}

async function groupRow(page, name) {
  return page.locator('#groups-table tbody tr').filter({ has: page.getByRole('button', { name: `Show members of ${name}` }) });
}

async function cellTexts(row) {
  return row.locator('th, td').allInnerTexts();
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('overview shows the cycle, balance, usage, unallocated and pending figures of the API', async () => {
  const s = await startServer();
  try {
    await s.api('POST', `${A}/usage`, { member: 'u-1001', credits: '1234.5', idempotencyKey: 'ov-1' });
    const page = await open(s);
    const o = await s.get(`${A}/overview`);
    assert.equal(await page.locator('#ov-cycle').innerText(), `Cycle ${o.cycle.number}`);
    assert.equal(await page.locator('#ov-balance').innerText(), fmt(o.balance));
    assert.equal(o.balance, '98765.5');
    assert.equal(await page.locator('#ov-balance').innerText(), '98,765.5');
    assert.equal(await page.locator('#ov-used').innerText(), '1,234.5');
    assert.equal(await page.locator('#ov-percent').innerText(), `${o.usagePercent}%`);
    assert.equal(await page.locator('#ov-unallocated').innerText(), fmt(o.unallocated));
    assert.equal(await page.locator('#ov-pending').innerText(), String(o.pendingRequests));
    assert.match(await page.locator('#ov-reset-in').innerText(), /^resets in 21 d 13 h$/);
    const bars = page.locator('#ov-chart svg rect.chart-budget');
    assert.equal(await bars.count(), o.groups.length);
    const desc = await page.locator('#chart-desc').textContent();
    for (const g of o.groups) assert.ok(desc.includes(`${g.name}: budget ${fmt(g.budget)}, used ${fmt(g.used)}`), desc);
    assert.equal(await page.locator('#tracking-off').isVisible(), false);
    if (shots) await page.screenshot({ path: join(shots, 'overview.png'), fullPage: true });
    assert.deepEqual(page.problems, []);
  } finally { s.stop(); }
});

test('a credit factor of 0 shows the tracking-disabled notice', async () => {
  const s = await startServer();
  try {
    const r = await s.api('PATCH', `${A}/settings`, { creditFactor: '0' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const page = await open(s);
    assert.equal(await page.locator('#tracking-off').isVisible(), true);
    assert.match(await page.locator('#tracking-off').innerText(), /Credit tracking is disabled/);
  } finally { s.stop(); }
});

test('the groups table shows every group with the API figures', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    await page.getByRole('tab', { name: 'Allocations' }).click();
    const headers = await page.locator('#groups-table thead th').allInnerTexts();
    assert.deepEqual(headers.map((h) => h.toLowerCase()), ['group', 'members', 'monthly', 'extra', 'distributed', 'available', 'used', 'auto-approve', 'actions']);
    const groups = (await s.get(`${A}/groups`)).items;
    assert.equal(await page.locator('#groups-table tbody tr').count(), groups.length);
    for (const g of groups) {
      const cells = await cellTexts(await groupRow(page, g.name));
      assert.deepEqual(cells.slice(0, 8), [g.name, String(g.members), fmt(g.monthlyCredits), fmt(g.extraCredits),
        fmt(g.distributed), fmt(g.available), fmt(g.used), fmt(g.autoApproveReserve)]);
    }
    if (shots) await page.screenshot({ path: join(shots, 'allocations.png'), fullPage: true });
  } finally { s.stop(); }
});

test('members: search by name or email and pages of 10 (x–y of N)', async () => {
  const s = await startServer();
  try {
    for (let i = 1; i <= 12; i++) {
      const n = String(i).padStart(2, '0');
      const r = await s.api('POST', `${A}/members`, { user: { id: `u-9${n}`, email: `temp${n}@acme.example`, name: `Temp ${n}` }, group: 'default' });
      assert.equal(r.status, 201, JSON.stringify(r.body));
    }
    const total = (await s.get(`${A}/groups/default/members?pageSize=500`)).total;
    assert.ok(total >= 12, `total ${total}`);
    const page = await open(s);
    await page.getByRole('tab', { name: 'Allocations' }).click();
    const search = page.getByPlaceholder('Search members in Default…');
    await search.waitFor();
    assert.equal(await page.locator('#pager-text').innerText(), `1–10 of ${total}`);
    assert.equal(await page.locator('#members-table tbody tr').count(), 10);
    await page.getByRole('button', { name: 'Next' }).first().click();
    await page.waitForFunction((t) => document.getElementById('pager-text').textContent === `11–${t} of ${t}`, total);
    assert.equal(await page.locator('#members-table tbody tr').count(), total - 10);
    await search.fill('TEMP07@');
    await page.waitForFunction(() => document.getElementById('pager-text').textContent === '1–1 of 1');
    assert.match(await page.locator('#members-table tbody tr').first().innerText(), /Temp 07/);
    await search.fill('temp 1');
    await page.waitForFunction(() => document.getElementById('pager-text').textContent === '1–3 of 3');
    await search.fill('nobody-here');
    await page.waitForFunction(() => document.getElementById('pager-text').textContent === '0–0 of 0');
    assert.match(await page.locator('#members-table tbody').innerText(), /No member matches/);
  } finally { s.stop(); }
});

test('editing a member\'s monthly credits: Unsaved, save, banner, group totals follow, one line of YAML changes', async () => {
  const s = await startServer();
  try {
    const before = s.file('members/research.yaml');
    const g0 = (await s.get(`${A}/groups`)).items.find((g) => g.name === 'research');
    const page = await open(s);
    await page.getByRole('tab', { name: 'Allocations' }).click();
    await page.getByRole('button', { name: 'Show members of research' }).click();
    await page.waitForFunction(() => document.getElementById('members-title').textContent === 'Members of research');
    const ada = page.locator('#members-table tbody tr').filter({ hasText: 'Ada Lovelace' });
    await ada.getByRole('button', { name: 'Monthly: 12,000. Edit' }).click();
    const input = ada.getByRole('textbox', { name: 'Monthly' });
    assert.equal(await input.inputValue(), '12000');
    assert.equal(await ada.getByText('Unsaved').isVisible(), false);
    await input.fill('13500');
    assert.equal(await ada.getByText('Unsaved').isVisible(), true);
    await ada.getByRole('button', { name: 'Save Monthly' }).click();
    const bannerEl = page.locator('#banner');
    await bannerEl.waitFor({ state: 'visible' });
    assert.match(await bannerEl.innerText(), /Saved: Ada Lovelace's monthly credits are now 13,500/);
    assert.match(await bannerEl.getAttribute('class'), /ok/);
    const g1 = (await s.get(`${A}/groups`)).items.find((g) => g.name === 'research');
    assert.equal(g1.distributed, String(Number(g0.distributed) + 1500));
    assert.equal(g1.available, String(Number(g0.available) - 1500));
    await page.waitForFunction((v) => document.querySelector('#groups-table').innerText.includes(v), fmt(g1.distributed));
    const cells = await cellTexts(await groupRow(page, 'research'));
    assert.equal(cells[4], fmt(g1.distributed));
    assert.equal(cells[5], fmt(g1.available));
    assert.equal((await ada.locator('td').first().innerText()).trim(), '13,500');
    assert.deepEqual(changedLines(before, s.file('members/research.yaml')), [['  monthlyCredits: 12000', '  monthlyCredits: 13500']]);
  } finally { s.stop(); }
});

test('a bad value (negative, 10 decimals, letters) shows the field\'s error and changes nothing', async () => {
  const s = await startServer();
  try {
    const before = s.file('members/research.yaml');
    const page = await open(s);
    await page.getByRole('tab', { name: 'Allocations' }).click();
    await page.getByRole('button', { name: 'Show members of research' }).click();
    const ada = page.locator('#members-table tbody tr').filter({ hasText: 'Ada Lovelace' });
    await ada.getByRole('button', { name: 'Monthly: 12,000. Edit' }).click();
    const input = ada.getByRole('textbox', { name: 'Monthly' });
    const cases = [['-5', /monthlyCredits: must be 0 or more/], ['1.0000000001', /monthlyCredits: has more than 9 decimal places/], ['lots', /monthlyCredits: must be a decimal number/]];
    for (const [value, message] of cases) {
      await input.fill(value);
      await ada.getByRole('button', { name: 'Save Monthly' }).click();
      const error = ada.getByRole('alert');
      await page.waitForFunction((el) => el.textContent.length > 0, await error.elementHandle());
      assert.match(await error.innerText(), message);
      assert.equal(await input.getAttribute('aria-invalid'), 'true');
      await error.evaluate((el) => { el.textContent = ''; });
    }
    assert.equal(s.file('members/research.yaml'), before);
    const m = (await s.get(`${A}/groups/research/members`)).items.find((x) => x.user.id === 'u-1001');
    assert.equal(m.monthlyCredits, '12000');
    await input.press('Escape');
    assert.equal(await ada.getByRole('button', { name: 'Monthly: 12,000. Edit' }).isVisible(), true);
  } finally { s.stop(); }
});

test('requests: the status filter shows only that status', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    await page.getByRole('tab', { name: 'Requests' }).click();
    const options = await page.locator('#status-filter option').allInnerTexts();
    assert.deepEqual(options, ['All Statuses', 'Pending', 'Approved', 'Denied', 'Auto-Approved']);
    const all = (await s.get(`${A}/requests`)).items;
    await page.waitForFunction((n) => document.querySelectorAll('#requests-table tbody tr').length === n, all.length);
    for (const [label, phase] of [['Pending', 'Pending'], ['Auto-Approved', 'AutoApproved']]) {
      await page.getByRole('combobox', { name: 'Status' }).selectOption({ label });
      const want = all.filter((r) => r.phase === phase);
      assert.ok(want.length > 0);
      await page.waitForFunction(([n, text]) => {
        const rows = [...document.querySelectorAll('#requests-table tbody tr')];
        return rows.length === n && rows.every((r) => r.innerText.includes(text));
      }, [want.length, label]);
      for (const r of want) assert.match(await page.locator('#requests-table tbody').innerText(), new RegExp(r.user.email.replace('.', '\\.')));
    }
    const ada = (await s.get(`${A}/requests?status=AutoApproved`)).items[0];
    const row = page.locator('#requests-table tbody tr').first();
    const cells = await cellTexts(row);
    assert.deepEqual(cells.slice(1, 4), [fmt(ada.credits), fmt(ada.approvedCredits), ada.reason]);
    assert.match(cells[0], new RegExp(`${ada.user.name}\\s+${ada.user.email}`));
    assert.equal(await row.locator('.badge').innerText(), 'Auto-Approved');
    await row.click();
    assert.match(await page.locator('#decide-decided').innerText(), /^Decided by .+ on .+, 1,500 credits approved\.$/);
    assert.equal(await page.locator('#decide-actions').isVisible(), false);
  } finally { s.stop(); }
});

test('approving a Pending request with a smaller amount shows Approved with that amount and who decided', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    await page.getByRole('tab', { name: 'Requests' }).click();
    await page.getByRole('combobox', { name: 'Status' }).selectOption({ label: 'Pending' });
    const row = page.locator('#requests-table tbody tr').filter({ hasText: 'Jim' });
    await row.click();
    assert.equal(await page.getByLabel('Credits to approve').inputValue(), '1000');
    await page.getByLabel('Credits to approve').fill('1000.5');
    await page.getByRole('button', { name: 'Approve' }).click();
    await page.waitForFunction(() => document.getElementById('decide-error').textContent.length > 0);
    assert.match(await page.locator('#decide-error').innerText(), /at most the 1000 requested, got 1000\.5/);
    assert.equal((await s.get(`${A}/requests`)).items.find((x) => x.name === 'jim-backfill').phase, 'Pending');
    await page.getByLabel('Credits to approve').fill('800');
    await page.getByRole('button', { name: 'Approve' }).click();
    await page.locator('#banner').waitFor({ state: 'visible' });
    assert.match(await page.locator('#banner').innerText(), /Approved 800 credits for Jim/);
    const r = (await s.get(`${A}/requests`)).items.find((x) => x.name === 'jim-backfill');
    assert.equal(r.phase, 'Approved');
    assert.equal(r.approvedCredits, '800');
    await page.getByRole('combobox', { name: 'Status' }).selectOption({ label: 'Approved' });
    const approved = page.locator('#requests-table tbody tr').filter({ hasText: 'Jim' });
    await approved.waitFor();
    assert.equal(await approved.locator('.badge').innerText(), 'Approved');
    assert.equal((await cellTexts(approved))[2], '800');
    assert.match(await page.locator('#decide-decided').innerText(), /^Decided by local on .+, 800 credits approved\.$/);
    if (shots) await page.screenshot({ path: join(shots, 'requests.png'), fullPage: true });
  } finally { s.stop(); }
});

test('denying needs a reason; with one the request is Denied', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    await page.getByRole('tab', { name: 'Requests' }).click();
    await page.locator('#requests-table tbody tr').filter({ hasText: 'Linus' }).click();
    await page.getByRole('button', { name: 'Deny' }).click();
    assert.match(await page.locator('#decide-error').innerText(), /reason: is required/);
    assert.equal((await s.get(`${A}/requests`)).items.find((x) => x.name === 'linus-load-test').phase, 'Pending');
    await page.getByLabel('Reason for denying').fill('Use the shared load-test budget');
    await page.getByRole('button', { name: 'Deny' }).click();
    await page.locator('#banner').waitFor({ state: 'visible' });
    const r = (await s.get(`${A}/requests`)).items.find((x) => x.name === 'linus-load-test');
    assert.equal(r.phase, 'Denied');
    const row = page.locator('#requests-table tbody tr').filter({ hasText: 'Linus' });
    await page.waitForFunction(() => [...document.querySelectorAll('#requests-table .badge')].some((b) => b.textContent === 'Denied'));
    assert.equal(await row.locator('.badge').innerText(), 'Denied');
  } finally { s.stop(); }
});

test('credits per cycle: Cancel changes nothing, Apply change does (dialog shows the credits used)', async () => {
  const s = await startServer();
  try {
    await s.api('POST', `${A}/usage`, { member: 'u-1001', credits: '2500', idempotencyKey: 'set-1' });
    const before = s.file('account.yaml');
    const page = await open(s);
    await page.getByRole('tab', { name: 'Settings' }).click();
    const field = page.getByLabel('Credits per cycle');
    assert.equal(await field.inputValue(), '100000');
    await field.fill('120000');
    await page.locator('#limit-form').getByRole('button', { name: 'Save' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    const text = await dialog.innerText();
    assert.match(text, /100,000 → 120,000/);
    assert.match(text, /takes effect immediately for the current cycle/);
    assert.match(text, /Credits already used \(2,500\) remain unchanged/);
    if (shots) await page.screenshot({ path: join(shots, 'settings-confirm.png') });
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    assert.equal(s.file('account.yaml'), before);
    assert.equal((await s.get(`${A}/overview`)).creditsPerCycle, '100000');
    await page.waitForFunction(() => document.getElementById('credits-per-cycle').value === '100000');
    await field.fill('120000');
    await page.locator('#limit-form').getByRole('button', { name: 'Save' }).click();
    await dialog.getByRole('button', { name: 'Apply change' }).click();
    await page.locator('#banner').waitFor({ state: 'visible' });
    assert.match(await page.locator('#banner').innerText(), /credits per cycle are now 120,000/);
    const o = await s.get(`${A}/overview`);
    assert.equal(o.creditsPerCycle, '120000');
    assert.equal(o.balance, '117500');
    assert.deepEqual(changedLines(before, s.file('account.yaml')), [['  creditsPerCycle: 100000', '  creditsPerCycle: 120000']]);
    await page.getByRole('tab', { name: 'Overview' }).click();
    assert.equal(await page.locator('#ov-balance').innerText(), '117,500');
  } finally { s.stop(); }
});

test('a cadence change asks first and starts cycle n+1; a bad custom cadence names the field', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    const n = (await s.get(`${A}/overview`)).cycle.number;
    await page.getByRole('tab', { name: 'Settings' }).click();
    const options = await page.locator('#cadence option').allInnerTexts();
    assert.deepEqual(options, ['Calendar month', '15 days', '1 week', '1 day', '12 hours', '1 hour', 'Custom duration…']);
    assert.match(await page.locator('#panel-settings').innerText(), /Changing the cadence starts a fresh cycle immediately/);
    await page.getByRole('combobox', { name: 'Cycle cadence' }).selectOption({ label: 'Custom duration…' });
    await page.getByLabel('Custom duration').fill('fortnight');
    await page.locator('#cadence-form').getByRole('button', { name: 'Save' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Apply change' }).click();
    await page.waitForFunction(() => document.getElementById('cadence-error').textContent.length > 0);
    assert.match(await page.locator('#cadence-error').innerText(), /^cadence: must be CalendarMonth or a duration/);
    assert.equal((await s.get(`${A}/overview`)).settings.cadence, 'CalendarMonth');
    await page.getByRole('combobox', { name: 'Cycle cadence' }).selectOption({ label: '1 week' });
    await page.locator('#cadence-form').getByRole('button', { name: 'Save' }).click();
    const dialog = page.getByRole('dialog');
    assert.match(await dialog.innerText(), new RegExp(`cycle ${n} closes now and cycle ${n + 1} begins`));
    await dialog.getByRole('button', { name: 'Apply change' }).click();
    await page.locator('#banner').waitFor({ state: 'visible' });
    const o = await s.get(`${A}/overview`);
    assert.equal(o.cycle.number, n + 1);
    assert.equal(o.settings.cadence, '1w');
    assert.match(await page.locator('#banner').innerText(), new RegExp(`cadence is now 1 week; cycle ${n + 1} has started`));
    assert.equal(await page.locator('#cadence-now').innerText(), '1 week');
    assert.match(s.file('account.yaml'), /\n {2}cadence: 1w\n/);
    if (shots) await page.screenshot({ path: join(shots, 'settings.png'), fullPage: true });
  } finally { s.stop(); }
});

test('Reset cycle now asks with the account\'s name; Cancel keeps the cycle, confirming starts the next', async () => {
  const s = await startServer();
  try {
    await s.api('POST', `${A}/usage`, { member: 'u-1001', credits: '10', idempotencyKey: 'reset-1' });
    const page = await open(s);
    const n = (await s.get(`${A}/overview`)).cycle.number;
    await page.getByRole('tab', { name: 'Settings' }).click();
    await page.getByRole('button', { name: 'Reset cycle now' }).click();
    const dialog = page.getByRole('dialog');
    assert.match(await dialog.innerText(), /Reset the cycle of ml-platform\/acme now\?/);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await s.get(`${A}/overview`)).cycle.number, n);
    await page.getByRole('button', { name: 'Reset cycle now' }).click();
    await dialog.getByRole('button', { name: 'Reset cycle now' }).click();
    await page.locator('#banner').waitFor({ state: 'visible' });
    const o = await s.get(`${A}/overview`);
    assert.equal(o.cycle.number, n + 1);
    assert.equal(o.used, '0');
    await page.getByRole('tab', { name: 'Overview' }).click();
    assert.equal(await page.locator('#ov-cycle').innerText(), `Cycle ${n + 1}`);
  } finally { s.stop(); }
});

test('figures follow usage recorded from outside, without a reload', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    assert.equal(await page.locator('#ov-used').innerText(), '0');
    await new Promise((r) => setTimeout(r, 300));
    const r = await s.api('POST', `${A}/usage`, { member: 'u-1002', costUsd: '12.34', idempotencyKey: 'live-1' });
    assert.equal(r.status, 200);
    await page.waitForFunction(() => document.getElementById('ov-used').textContent === '1,234', null, { timeout: 5000 });
    assert.equal(await page.locator('#ov-balance').innerText(), '98,766');
  } finally { s.stop(); }
});

test('enrolling a member from the console adds it to the group', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    await page.getByRole('tab', { name: 'Allocations' }).click();
    await page.getByRole('button', { name: 'Show members of data' }).click();
    await page.getByText('Enrol a member').click();
    await page.getByLabel('User id').fill('u-5555');
    await page.getByLabel('Email').fill('grace@acme.example');
    await page.getByLabel('Name', { exact: true }).fill('Grace Hopper');
    await page.getByRole('button', { name: 'Enrol' }).click();
    await page.locator('#banner').waitFor({ state: 'visible' });
    assert.match(await page.locator('#banner').innerText(), /Enrolled Grace Hopper in data with 500 credits remaining/);
    const m = (await s.get(`${A}/groups/data/members?search=grace`)).items;
    assert.equal(m.length, 1);
    await page.waitForFunction(() => document.getElementById('members-table').innerText.includes('Grace Hopper'));
  } finally { s.stop(); }
});

test('token sign-in: an admin token signs in; a gateway token gets read-only pages', async () => {
  const s = await startServer({ tokens: true });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const urls = [];
    page.on('request', (r) => urls.push(r.url()));
    await page.goto(s.url + '/');
    await page.getByLabel('Bearer token').waitFor();
    await page.getByLabel('Bearer token').fill('wrong-token-0123456789');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForFunction(() => document.getElementById('sign-in-error').textContent.includes('not accepted'));
    await page.getByLabel('Bearer token').fill(ADMIN_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForSelector('body[data-ready="true"]');
    assert.match(await page.locator('#who').innerText(), /alice \(admin\)/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('credit-operator.token')), ADMIN_TOKEN);
    assert.ok(urls.every((u) => !u.includes(ADMIN_TOKEN)), 'no token in a URL');
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Bearer token').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('credit-operator.token')), null);

    await page.getByLabel('Bearer token').fill(GATEWAY_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForSelector('body[data-ready="true"]');
    assert.equal(await page.locator('#read-only').isVisible(), true);
    await page.getByRole('tab', { name: 'Allocations' }).click();
    assert.equal(await page.locator('#groups-table .cell-value').count(), 0, 'no editable cells for a gateway');
    assert.equal(await page.getByText('Enrol a member').isVisible(), false);
    await page.getByRole('tab', { name: 'Requests' }).click();
    await page.locator('#requests-table tbody tr').filter({ hasText: 'Jim' }).click();
    assert.equal(await page.locator('#decide-actions').isVisible(), false);
    await page.getByRole('tab', { name: 'Settings' }).click();
    assert.equal(await page.getByRole('button', { name: 'Reset cycle now' }).isVisible(), false);
    assert.equal(await page.locator('#limit-form').isVisible(), false);
    const r = await s.api('PATCH', `${A}/settings`, { creditsPerCycle: '1' }, GATEWAY_TOKEN);
    assert.equal(r.status, 403);
    assert.ok(!s.log().includes(ADMIN_TOKEN) && !s.log().includes(GATEWAY_TOKEN), 'no token in a log line');
    await context.close();
  } finally { s.stop(); }
});

test('cost: usage by model, provider, group and member with a chart, past cycles, and live', async () => {
  const s = await startServer();
  try {
    const spend = async (body) => {
      const r = await s.api('POST', `${A}/usage`, body);
      assert.equal(r.status, 200, JSON.stringify(r.body));
    };
    // Factor 100: a dollar is 100 credits.
    await spend({ member: 'u-1001', costUsd: '1.5', idempotencyKey: 'cost-1', model: 'gpt-4o', provider: 'openai' });
    await spend({ member: 'u-1002', costUsd: '2.25', idempotencyKey: 'cost-2', model: 'claude-3.5-sonnet', provider: 'anthropic' });
    await spend({ member: 'u-1001', costUsd: '0.5', idempotencyKey: 'cost-3', model: 'gpt-4o', provider: 'openai' });
    await spend({ member: 'u-1002', credits: '10', idempotencyKey: 'cost-4' });
    const page = await open(s);
    await page.getByRole('tab', { name: 'Cost' }).click();
    const api = await s.get(`${A}/costs?groupBy=model`);
    assert.deepEqual(api.total, { credits: '435', costUsd: '4.25', events: 4 });
    assert.equal(await page.locator('#cost-credits').innerText(), '435');
    assert.equal(await page.locator('#cost-usd').innerText(), '$4.25');
    assert.equal(await page.locator('#cost-events').innerText(), '4');
    const rows = async () => (await page.locator('#cost-table tbody tr').evaluateAll(
      (trs) => trs.map((tr) => [...tr.querySelectorAll('th, td')].map((c) => c.innerText.replace(/\s+/g, ' ').trim()))));
    assert.deepEqual(await rows(), [
      ['claude-3.5-sonnet', '225', '$2.25', '1'],
      ['gpt-4o', '200', '$2', '2'],
      ['(none)', '10', '$0', '1'],
    ]);
    assert.deepEqual(await rows(), api.items.map((i) => [i.key, fmt(i.credits), `$${fmt(i.costUsd)}`, String(i.events)]));
    assert.equal(await page.locator('#cost-chart svg rect.chart-used').count(), 3);
    assert.match(await page.locator('#cost-chart-desc').textContent(), /gpt-4o: 200 credits, \$2/);
    assert.equal(await page.locator('#cost-pager-text').innerText(), '1–3 of 3');
    if (shots) await page.screenshot({ path: join(shots, 'cost.png'), fullPage: true });

    await page.getByLabel('Group by').selectOption('provider');
    await page.waitForFunction(() => document.getElementById('cost-key-head').textContent === 'Provider');
    assert.deepEqual((await rows()).map((r) => r[0]), ['anthropic', 'openai', '(none)']);
    await page.getByLabel('Group by').selectOption('member');
    await page.waitForFunction(() => document.getElementById('cost-key-head').textContent === 'Member');
    const members = await s.get(`${A}/costs?groupBy=member`);
    assert.deepEqual(await rows(), members.items.map((i) => [`${i.label} ${i.key}`, fmt(i.credits), `$${fmt(i.costUsd)}`, String(i.events)]));
    assert.equal(members.items[0].key, 'u-1002');
    await page.getByLabel('Group by').selectOption('group');
    await page.waitForFunction(() => document.getElementById('cost-key-head').textContent === 'Group');
    assert.deepEqual(await rows(), [['research', '435', '$4.25', '4']]);

    // Live: usage from outside shows without a reload.
    await spend({ member: 'u-1001', costUsd: '0.01', idempotencyKey: 'cost-5', model: 'gpt-4o' });
    await page.waitForFunction(() => document.getElementById('cost-events').textContent === '5', null, { timeout: 5000 });
    assert.deepEqual(await rows(), [['research', '436', '$4.26', '5']]);

    // After a reset the past cycle stays readable.
    const reset = await s.api('POST', `${A}/reset`, {});
    assert.equal(reset.status, 200);
    await page.waitForFunction(() => document.getElementById('cost-events').textContent === '0', null, { timeout: 5000 });
    assert.equal(await page.locator('#cost-chart').innerText(), 'No usage in this cycle yet.');
    await page.getByLabel('Cycle', { exact: true }).selectOption('1');
    await page.waitForFunction(() => document.getElementById('cost-events').textContent === '5');
    assert.match(await page.locator('#cost-window').innerText(), /^Cycle 1: /);
    assert.deepEqual(await rows(), [['research', '436', '$4.26', '5']]);
    assert.deepEqual(page.problems, []);
  } finally { s.stop(); }
});

test('at 390 px wide no tab scrolls sideways', async () => {
  const s = await startServer();
  try {
    const page = await open(s, { width: 390, height: 844 });
    await s.api('POST', `${A}/usage`, { member: 'u-1001', costUsd: '1', idempotencyKey: 'phone-1', model: 'a-rather-long-model-name-from-a-provider@2026-01-01' });
    for (const tab of ['Overview', 'Allocations', 'Requests', 'Settings', 'Cost']) {
      await page.getByRole('tab', { name: tab }).click();
      if (tab === 'Requests') await page.locator('#requests-table tbody tr').first().click();
      const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert.ok(scroll <= inner, `${tab}: scrollWidth ${scroll} > ${inner}`);
      if (shots && tab === 'Allocations') await page.screenshot({ path: join(shots, 'phone-allocations.png'), fullPage: true });
    }
    assert.deepEqual(page.problems, []);
  } finally { s.stop(); }
});

test('keyboard: arrow keys move between tabs and the selected tab is announced', async () => {
  const s = await startServer();
  try {
    const page = await open(s);
    await page.getByRole('tab', { name: 'Overview' }).focus();
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getByRole('tab', { name: 'Allocations' }).getAttribute('aria-selected'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-allocations');
    assert.equal(await page.locator('#panel-allocations').isVisible(), true);
    await page.keyboard.press('End');
    assert.equal(await page.getByRole('tab', { name: 'Cost' }).getAttribute('aria-selected'), 'true');
    await page.keyboard.press('ArrowLeft');
    assert.equal(await page.getByRole('tab', { name: 'Settings' }).getAttribute('aria-selected'), 'true');
    await page.keyboard.press('End');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getByRole('tab', { name: 'Overview' }).getAttribute('aria-selected'), 'true');
  } finally { s.stop(); }
});

async function main() {
  if (shots) mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const only = process.env.UI_TEST_FILTER;
  let passed = 0;
  let failed = 0;
  for (const t of tests) {
    if (only && !t.name.includes(only)) continue;
    const started = Date.now();
    try {
      await t.fn();
      passed += 1;
      console.log(`ok   ${t.name} (${Date.now() - started} ms)`);
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${t.name}\n     ${String(err && err.stack || err).split('\n').join('\n     ')}`);
    }
  }
  await browser.close();
  console.log(failed ? `${passed} passed, ${failed} failed` : `${passed} passed`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(1); });
