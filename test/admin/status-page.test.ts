/**
 * The status page in a real browser (Debian's chromium driven by playwright-core): it shows live
 * figures while traffic flows, a Drain click changes the backend's state (verified through the
 * API), and a screenshot is saved to test/artifacts/status-page.png.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { connectClient, readLine, sleep, waitFor } from '../helpers/net.ts';
import { api, backendView, BUILT_COMMIT, PACKAGE_VERSION, startStack, TOKEN, type Stack } from './stack.ts';

const HOST = '127.5.5.1';
const ARTIFACTS = new URL('../artifacts/', import.meta.url).pathname;

let stack: Stack;
let browser: BrowserContext;
let page: Page;
let profile: string;
let traffic = true;
let trafficDone: Promise<void>;
const held: Socket[] = [];

/** Bounded background traffic: connections that push data through the balancer until stopped. */
async function pump(): Promise<void> {
  const chunk = Buffer.alloc(16 * 1024, 'y');
  const end = Date.now() + 60_000;
  while (traffic && Date.now() < end) {
    const c = await connectClient(stack.servicePort, HOST);
    await readLine(c);
    for (let i = 0; i < 8; i++) c.write(chunk);
    await sleep(60); // pacing the traffic (the rates on the page), not a wait for a result
    c.destroy();
  }
}

beforeAll(async () => {
  stack = await startStack({
    host: HOST,
    backends: 3,
    serviceExtra: '    health: { type: tcp, interval: 250ms, timeout: 100ms, rise: 1, fall: 1 }\n',
  });
  for (let i = 0; i < 4; i++) {
    const c = await connectClient(stack.servicePort, HOST);
    await readLine(c);
    held.push(c);
  }
  trafficDone = Promise.all([pump(), pump()]).then(() => undefined);
  profile = await mkdtemp(join(tmpdir(), 'fulcrum-chromium-'));
  // A fresh profile directory (playwright passes it to chromium as --user-data-dir).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1360, height: 640 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = browser.pages()[0] ?? (await browser.newPage());
});

afterAll(async () => {
  traffic = false;
  await trafficDone?.catch(() => undefined);
  for (const c of held) c.destroy();
  await browser?.close();
  await stack?.close();
  if (profile) await rm(profile, { recursive: true, force: true });
});

const rowOf = (address: string) => `tr[data-backend="web|${address}"]`;

describe('status page', () => {
  it('shows live figures while traffic flows', async () => {
    await page.goto(stack.admin + '/');
    const b0 = stack.backends[0].address;
    await page.waitForSelector(rowOf(b0));
    // The session counter in the page grows without a reload.
    const sessions = async (): Promise<number> => Number((await page.locator('[data-field="svc-total"]').first().textContent())!.replace(/,/g, ''));
    await waitFor(async () => (await sessions()) > 0, 5000, 'sessions on the page');
    const first = await sessions();
    await waitFor(async () => (await sessions()) > first, 5000, 'the page to update live');
    // Throughput is computed from counter deltas: a non-zero rate shows while traffic flows.
    await waitFor(async () => /[1-9][\d.]* (B|KiB|MiB)\/s/.test((await page.locator('[data-field="svc-in"]').first().textContent()) ?? ''), 5000, 'a live in/s rate');
    // Backends with their state, weight and active sessions; the held sessions are visible.
    expect(await page.locator(`${rowOf(b0)} .pill`).textContent()).toBe('up');
    await waitFor(async () => Number(await page.locator('[data-field="svc-active"]').first().textContent().then((t) => t!.split(' ')[0])) >= 4, 5000, 'active sessions on the page');
    // The version in the header, the commit and Node.js in its tooltip.
    expect(await page.textContent('#version')).toBe(PACKAGE_VERSION);
    expect(await page.getAttribute('#version', 'title')).toBe(BUILT_COMMIT ? `commit ${BUILT_COMMIT} · Node.js ${process.version}` : `Node.js ${process.version}`);
    // Health history strips fill with probe results.
    await waitFor(async () => (await page.locator(`${rowOf(b0)} .strip i`).count()) >= 2, 5000, 'probe results in the strip');
  });

  it('drains a backend with a click, with the token entered in the page', async () => {
    const b1 = stack.backends[1].address;
    const drain = page.locator(`${rowOf(b1)} button[data-state="drain"]`);
    // Without a token the buttons are disabled: changes need it.
    expect(await drain.isDisabled()).toBe(true);
    await page.fill('#token', TOKEN);
    await page.click('#token-save');
    await waitFor(() => drain.isEnabled(), 3000, 'the buttons to enable');
    await drain.click();
    await waitFor(async () => (await backendView(stack.admin, 'web', b1))?.state === 'drain', 3000, 'the drain to reach the balancer');
    await waitFor(async () => (await page.locator(`${rowOf(b1)} .pill`).textContent()) === 'drain', 3000, 'the page to show drain');
    // The token survives a reload of the page (sessionStorage), and a wrong one shows the API's refusal.
    await page.reload();
    await page.waitForSelector(rowOf(b1));
    expect(await page.inputValue('#token')).toBe(TOKEN);
    await page.fill('#token', 'wrong');
    await page.click('#token-save');
    await page.locator(`${rowOf(b1)} button[data-state="ready"]`).click();
    await waitFor(async () => /token does not match/.test((await page.textContent('#toast')) ?? ''), 3000, 'the refusal to show');
    expect((await backendView(stack.admin, 'web', b1)).state).toBe('drain');
    await page.fill('#token', TOKEN);
    await page.click('#token-save');
  });

  it('saves a screenshot', async () => {
    // Until the sparklines hold six points (one per poll; the area path draws n points with n − 1
    // segments plus two to close it) and the last toast has faded.
    await waitFor(async () => {
      const d = (await page.locator('svg.spark path.a').first().getAttribute('d')) ?? '';
      return (d.match(/L/g)?.length ?? 0) >= 5 + 2 && (await page.locator('#toast.show').count()) === 0;
    }, 15_000, 'six points in the sparklines and no toast');
    await mkdir(ARTIFACTS, { recursive: true });
    const file = join(ARTIFACTS, 'status-page.png');
    await page.screenshot({ path: file, fullPage: true });
    const { stat } = await import('node:fs/promises');
    expect((await stat(file)).size).toBeGreaterThan(10_000);
    expect((await api(stack.admin, 'GET', '/api/services')).status).toBe(200);
  });

  it('a link with #token= (what `fulcrum demo` prints) fills the token in and leaves the address bar', async () => {
    const b2 = stack.backends[2].address;
    // A tab of its own: the token of the tests above lives in the first tab's sessionStorage.
    const tab = await browser.newPage();
    try {
      await tab.goto(`${stack.admin}/#token=${TOKEN}`);
      await tab.waitForSelector(rowOf(b2));
      expect(await tab.inputValue('#token')).toBe(TOKEN);
      expect(new URL(tab.url()).hash).toBe('');
      const maint = tab.locator(`${rowOf(b2)} button[data-state="maint"]`);
      await waitFor(() => maint.isEnabled(), 3000, 'the buttons to enable');
      await maint.click();
      await waitFor(async () => (await backendView(stack.admin, 'web', b2))?.state === 'maint', 3000, 'the maint to reach the balancer');
      await tab.locator(`${rowOf(b2)} button[data-state="ready"]`).click();
      await waitFor(async () => (await backendView(stack.admin, 'web', b2))?.state === 'up', 3000, 'ready again');
    } finally {
      await tab.close();
    }
  });

  it('the card names its check; a down backend says why in words, not only on hover', async () => {
    // Its traffic stopped first: a pump meeting the dead backend is not what this test is about.
    traffic = false;
    await trafficDone;
    expect(await page.locator('section.svc[data-service="web"] .meta').first().textContent()).toContain('check tcp');
    const b2 = stack.backends[2].address;
    const why = page.locator(`${rowOf(b2)} [data-field="down-reason"]`);
    expect(await why.textContent()).toBe('');
    await stack.backends[2].close();
    await waitFor(async () => (await page.locator(`${rowOf(b2)} .pill`).textContent()) === 'down', 5000, 'the page to show down');
    await waitFor(async () => /ECONNREFUSED|refused/.test((await why.textContent()) ?? ''), 5000, 'the reason on the page');
    expect(await why.isVisible()).toBe(true);
    // The API says the same, with when.
    const view = await backendView(stack.admin, 'web', b2);
    expect(view.down_reason.cause).toBe(await why.textContent());
    expect(Date.now() - Date.parse(view.down_reason.at)).toBeLessThan(10_000);
    // A healthy backend shows no reason.
    expect(await page.locator(`${rowOf(stack.backends[0].address)} [data-field="down-reason"]`).textContent()).toBe('');
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'status-page-down.png'), fullPage: true });
  });
});
