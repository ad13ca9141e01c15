import { existsSync } from 'node:fs';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeBackend } from '../http/fake-backend.js';
import { createHttpServer } from '../http/server.js';
import type { TinyServeHttpServer } from '../http/server.js';
import { DASHBOARD_HTML } from './page.js';
import { DASHBOARD_SCRIPT } from './script.js';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) {
  console.warn(`dashboard browser tests skipped: ${CHROMIUM} is absent (Debian: apt-get install -y chromium)`);
}

describe('dashboard assets', () => {
  it('the script parses, and the page loads nothing but its own script', () => {
    expect(() => new Function(DASHBOARD_SCRIPT)).not.toThrow();
    expect(DASHBOARD_HTML).toContain('<script src="/dashboard.js"></script>');
    expect(DASHBOARD_HTML).not.toMatch(/(src|href)="(https?:)?\/\//);
    expect(DASHBOARD_SCRIPT).not.toMatch(/https?:\/\//);
  });

  it('is served at / with a CSP that forbids other origins', async () => {
    const server = createHttpServer({ backend: new FakeBackend(), processMetrics: false });
    try {
      const page = await server.inject({ method: 'GET', url: '/' });
      expect(page.statusCode).toBe(200);
      expect(page.headers['content-type']).toMatch(/text\/html/);
      expect(page.headers['content-security-policy']).toMatch(/default-src 'none'; script-src 'self'/);
      const script = await server.inject({ method: 'GET', url: '/dashboard.js' });
      expect(script.headers['content-type']).toMatch(/javascript/);
      expect(script.body).toBe(DASHBOARD_SCRIPT);
    } finally {
      await server.close();
    }
  });
});

describe.skipIf(!hasChromium)(`dashboard in headless Chromium (${CHROMIUM})`, () => {
  let backend: FakeBackend;
  let server: TinyServeHttpServer;
  let url: string;
  let traffic = true;
  let load: Promise<void>;
  // playwright-core itself is imported only when Chromium is present.
  let browser: Browser;

  beforeAll(async () => {
    backend = new FakeBackend({ tokenDelayMs: 3 });
    server = createHttpServer({ backend, processMetrics: false, apiKeys: ['dash-key'] });
    url = await server.listen({ port: 0, host: '127.0.0.1' });
    const post = (body: object) =>
      fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer dash-key' },
        body: JSON.stringify(body),
      }).then((r) => r.text());
    await post({ prompt: 'hello session', max_tokens: 3, session_id: 'chat-1' });
    await post({ prompt: 'another one', max_tokens: 3, session_id: 'chat-2' });
    // Four clients streaming back to back while the page watches.
    load = Promise.all(
      [0, 1, 2, 3].map(async (i) => {
        while (traffic) await post({ prompt: `client ${i}`, max_tokens: 20, stream: true });
      }),
    ).then(() => undefined);
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  });

  afterAll(async () => {
    traffic = false;
    await browser?.close();
    await load;
    await server?.close();
  });

  it('asks for the API key, then shows live numbers, charts and sessions, loading nothing from the network', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const origins = new Set<string>();
    const errors: string[] = [];
    page.on('request', (r) => origins.add(new URL(r.url()).origin));
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => {
      // The 401s before the key is entered are expected; anything else is a bug.
      if (m.type() === 'error' && !/401/.test(m.text())) errors.push(m.text());
    });
    await page.goto(url);
    await page.locator('#auth').waitFor({ state: 'visible' });
    await page.fill('#auth-key', 'dash-key');
    await page.click('#auth button');
    await expect.poll(() => page.textContent('#model-name'), { timeout: 10_000 }).toBe('fake-model');
    await expect.poll(() => page.textContent('#status')).toBe('serving');
    // Throughput needs two polls; wait for a positive rate while traffic flows.
    await expect.poll(async () => Number(await page.textContent('#throughput')), { timeout: 10_000 }).toBeGreaterThan(0);
    await expect.poll(async () => Number((await page.textContent('#requests-total'))!.replace(/,/g, '')), { timeout: 10_000 }).toBeGreaterThan(2);
    expect(await page.textContent('#ttft-p50')).toMatch(/^\d+(\.\d+)? m?s$/);
    expect(await page.textContent('#itl-p99')).toMatch(/^\d+(\.\d+)? m?s$/);
    expect(await page.textContent('#kv-pages')).toMatch(/^\d[\d,]* \/ 4,096$/);
    expect(await page.textContent('#sel-ratio')).toMatch(/^\d+\.\d %$/);
    expect(await page.textContent('#session-count')).toBe('2');
    const rows = await page.locator('#sessions-body tr').allTextContents();
    expect(rows.some((r) => r.startsWith('chat-1'))).toBe(true);
    // Let a few more polls land, then check the throughput line itself was drawn (its colour,
    // #4fb3ff, inside the chart), not just the grid.
    await page.waitForTimeout(2200);
    // Evaluated in the page (a string: this package is not type-checked against the DOM).
    const linePixels = await page.evaluate<number>(`(() => {
      const c = document.getElementById('chart-throughput');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - 79) < 40 && Math.abs(d[i + 1] - 179) < 40 && d[i + 2] > 200 && d[i + 3] > 128) n++;
      return n;
    })()`);
    expect(linePixels).toBeGreaterThan(50);
    await page.screenshot({ path: '/tmp/tinyserve-dashboard.png', fullPage: true });
    expect([...origins]).toEqual([url]);
    expect(errors).toEqual([]);
    await page.close();
  });
});
