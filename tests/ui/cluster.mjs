// The console in a cluster, in a real headless Chromium: sign-in with
// Kubernetes tokens (TokenReview), RBAC deciding each edit
// (SubjectAccessReview), the edit landing on the custom resource.
// `tests/cluster.rs` starts kube-apiserver, etcd and the operator, makes
// the tokens and runs this script:
//
//   CONSOLE_URL=http://127.0.0.1:PORT VIEWER_TOKEN=… EDITOR_TOKEN=… \
//     node tests/ui/cluster.mjs [SCREENSHOT_DIR]
//
// Prints one line per step and closes with `N passed` (exit 1 on any
// failure); the Rust test then checks the resource.

import assert from 'node:assert/strict';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.CONSOLE_URL;
const viewer = process.env.VIEWER_TOKEN;
const editor = process.env.EDITOR_TOKEN;
const shots = process.argv[2] ? resolve(process.argv[2]) : null;
if (!url || !viewer || !editor) {
  console.error('CONSOLE_URL, VIEWER_TOKEN and EDITOR_TOKEN are required');
  process.exit(2);
}

const steps = [];
const step = (name, fn) => steps.push({ name, fn });
let page;

async function signIn(token) {
  await page.getByLabel('Bearer token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function researchMonthly() {
  const row = page.locator('#groups-table tbody tr').filter({ has: page.getByRole('button', { name: 'Show members of research' }) });
  return row;
}

step('without a token the console asks for one and a wrong token is not accepted', async () => {
  await page.goto(`${url}/`);
  await page.getByLabel('Bearer token').waitFor();
  await signIn('not-a-kubernetes-token');
  await page.waitForFunction(() => document.getElementById('sign-in-error').textContent.includes('not accepted'));
});

step('a viewer\'s Kubernetes token signs in and reads the figures', async () => {
  await signIn(viewer);
  await page.waitForSelector('body[data-ready="true"]');
  assert.match(await page.locator('#who').innerText(), /system:serviceaccount:ml-platform:dashboard/);
  assert.match(await page.locator('#account-line').innerText(), /Account acme · namespace ml-platform/);
  assert.equal(await page.locator('#ov-limit').innerText(), '100,000');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('credit-operator.token')), viewer);
});

step('RBAC refuses the viewer\'s edit and the console names the missing permission', async () => {
  await page.getByRole('tab', { name: 'Allocations' }).click();
  const row = await researchMonthly();
  await row.getByRole('button', { name: 'Monthly: 40,000. Edit' }).click();
  await row.getByRole('textbox', { name: 'Monthly' }).fill('41000');
  await row.getByRole('button', { name: 'Save Monthly' }).click();
  const error = row.getByRole('alert');
  await page.waitForFunction((el) => el.textContent.length > 0, await error.elementHandle());
  assert.match(await error.innerText(), /may not patch creditgroups in namespace ml-platform/);
  await row.getByRole('textbox', { name: 'Monthly' }).press('Escape');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Bearer token').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('credit-operator.token')), null);
});

step('an editor\'s token saves the edit: banner, and the group\'s figures follow', async () => {
  await signIn(editor);
  await page.waitForSelector('body[data-ready="true"]');
  assert.match(await page.locator('#who').innerText(), /system:serviceaccount:ml-platform:platform/);
  await page.getByRole('tab', { name: 'Allocations' }).click();
  const row = await researchMonthly();
  await row.getByRole('button', { name: 'Monthly: 40,000. Edit' }).click();
  await row.getByRole('textbox', { name: 'Monthly' }).fill('41000');
  assert.equal(await row.getByText('Unsaved').isVisible(), true);
  await row.getByRole('button', { name: 'Save Monthly' }).click();
  await page.locator('#banner').waitFor({ state: 'visible' });
  assert.match(await page.locator('#banner').innerText(), /Saved: group research monthly credits is now 41,000/);
  await page.waitForFunction(() => [...document.querySelectorAll('#groups-table tbody tr')]
    .some((tr) => tr.innerText.includes('research') && tr.innerText.includes('41,000')));
  if (shots) await page.screenshot({ path: join(shots, 'cluster-allocations.png'), fullPage: true });
});

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  const problems = [];
  const urls = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => urls.push(r.url()));
  let passed = 0;
  let failed = 0;
  for (const s of steps) {
    const started = Date.now();
    try {
      await s.fn();
      passed += 1;
      console.log(`ok   ${s.name} (${Date.now() - started} ms)`);
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${s.name}\n     ${String(err && err.stack || err).split('\n').join('\n     ')}`);
      break;
    }
  }
  if (!failed) {
    try {
      assert.deepEqual(problems, []);
      assert.ok(urls.every((u) => !u.includes(viewer) && !u.includes(editor)), 'no token in a URL');
      passed += 1;
      console.log('ok   no page errors and no token in a URL');
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${err.message}`);
    }
  }
  await browser.close();
  console.log(failed ? `${passed} passed, ${failed} failed` : `${passed} passed`);
  process.exit(failed ? 1 : 0);
}

main().catch((err) => { console.error(err); process.exit(1); });
