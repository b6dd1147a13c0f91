// End-to-end test of the web console and the offline Swagger UI against a
// LIVE `warren up` (real microVMs), driven through Debian's Chromium with
// playwright-core.
//
//   npm run test:e2e
//
// Environment:
//   WARREN_BIN          warren binary (default /work/main/target/debug/warren,
//                       resolved relative to this repository)
//   WARREN_IMAGE_CACHE  guest image cache passed to the server
//                       (default /var/lib/warren/test-images)
//   WARREN_GUEST_AGENT  passed through to the server when set
//   CHROMIUM_BIN        default /usr/bin/chromium
//   WARREN_E2E_URL + WARREN_E2E_API_KEY
//                       use an already running server instead of starting one
//
// Artifacts go to web/test-results/: console.png (terminal screenshot),
// docs.png, server.log, failure-*.png.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const WEB = dirname(dirname(fileURLToPath(import.meta.url)));
const REPO = dirname(WEB);
const RESULTS = join(WEB, 'test-results');
const WARREN_BIN = resolve(process.env.WARREN_BIN ?? join(REPO, 'target/debug/warren'));
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const HEALTH_TIMEOUT_MS = 180_000;
const BOOT_TIMEOUT_MS = 180_000;
const STOP_GRACE_MS = 30_000;

mkdirSync(RESULTS, { recursive: true });
// Failure screenshots of an earlier run would only confuse.
for (const f of readdirSync(RESULTS)) if (f.startsWith('failure-')) rmSync(join(RESULTS, f), { force: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value. */
async function waitFor(what, fn, timeoutMs = 30_000, intervalMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

// ---------------------------------------------------------------- server

/** A `warren up` started for this test, in a fresh WARREN_HOME. */
class Server {
  proc = null;
  home = null;
  url = null;
  key = null;
  exited = null; // {code, signal} once the process is gone
  logTail = [];

  async start() {
    if (!existsSync(WARREN_BIN)) {
      throw new Error(`warren binary not found at ${WARREN_BIN}: build it (cargo build -p warren-cli) or set WARREN_BIN`);
    }
    const port = await freePort();
    this.home = mkdtempSync(join(os.tmpdir(), 'warren-web-e2e-'));
    this.url = `http://127.0.0.1:${port}`;
    const env = { ...process.env, WARREN_HOME: this.home };
    env.WARREN_IMAGE_CACHE = process.env.WARREN_IMAGE_CACHE ?? '/var/lib/warren/test-images';
    // The server's own fallback (warren-guest beside the binary) is the
    // dynamically linked debug build in a plain checkout: prefer the static
    // one that ./dev.sh builds when it is there.
    const staticGuest = join(REPO, 'target/x86_64-unknown-linux-gnu/release/warren-guest');
    if (!env.WARREN_GUEST_AGENT && existsSync(staticGuest)) env.WARREN_GUEST_AGENT = staticGuest;
    delete env.WARREN_URL;
    delete env.WARREN_API_KEY;
    const log = createWriteStream(join(RESULTS, 'server.log'));
    this.proc = spawn(WARREN_BIN, ['up', '--listen', `127.0.0.1:${port}`, '--on-shutdown', 'kill'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const onData = (chunk) => {
      log.write(chunk);
      for (const line of chunk.toString().split('\n')) if (line.trim()) this.logTail.push(line);
      if (this.logTail.length > 40) this.logTail.splice(0, this.logTail.length - 40);
    };
    this.proc.stdout.on('data', onData);
    this.proc.stderr.on('data', onData);
    this.exitPromise = new Promise((r) => {
      this.proc.on('exit', (code, signal) => {
        this.exited = { code, signal };
        log.end();
        r();
      });
      this.proc.on('error', (e) => {
        this.exited = { code: null, signal: null, error: e };
        r();
      });
    });

    await waitFor(
      `GET ${this.url}/health`,
      async () => {
        if (this.exited) {
          throw Object.assign(new Error(`warren up exited early (${JSON.stringify(this.exited)}):\n${this.logTail.join('\n')}`), { fatal: true });
        }
        const res = await fetch(`${this.url}/health`).catch(() => null);
        return res?.ok;
      },
      HEALTH_TIMEOUT_MS,
      250,
    ).catch((e) => {
      throw new Error(`${e.message}\nserver log tail:\n${this.logTail.join('\n')}`);
    });
    const keyFile = join(this.home, 'admin.key');
    this.key = await waitFor(`${keyFile}`, () => existsSync(keyFile) && readFileSync(keyFile, 'utf8').trim(), 10_000);
  }

  /** SIGTERM, SIGKILL after 30 s; then QEMU leftovers of this server; then the tmp dir. */
  async stop() {
    if (this.proc && !this.exited) {
      this.proc.kill('SIGTERM');
      let timer;
      const done = await Promise.race([
        this.exitPromise.then(() => true),
        new Promise((r) => (timer = setTimeout(() => r(false), STOP_GRACE_MS))),
      ]);
      clearTimeout(timer);
      if (!done) {
        console.error(`warren up did not stop within ${STOP_GRACE_MS / 1000} s of SIGTERM: SIGKILL`);
        this.proc.kill('SIGKILL');
        await this.exitPromise;
      }
    }
    this.killLeftovers();
    if (this.home) rmSync(this.home, { recursive: true, force: true });
    this.home = null;
  }

  /** Last resort on abnormal exit: synchronous. */
  stopNow() {
    if (this.proc && !this.exited) this.proc.kill('SIGKILL');
    this.killLeftovers();
    if (this.home) rmSync(this.home, { recursive: true, force: true });
    this.home = null;
  }

  /** Processes (QEMU) whose command line names this server's WARREN_HOME. */
  killLeftovers() {
    if (!this.home) return;
    let pids = [];
    try {
      pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
    } catch {
      return;
    }
    for (const pid of pids) {
      if (Number(pid) === process.pid) continue;
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (cmd.includes(this.home)) {
          console.error(`killing leftover process ${pid}: ${cmd.split('\0').slice(0, 3).join(' ')}`);
          process.kill(Number(pid), 'SIGKILL');
        }
      } catch {
        // gone already, or not ours to read
      }
    }
  }
}

// ---------------------------------------------------------------- test

describe('warren web console (live server)', { timeout: 15 * 60_000 }, () => {
  const server = new Server();
  let base;
  let key;
  let context;
  let page;
  let profileDir;
  let sandboxId = null;
  let promptAnswer = null; // what window.prompt() is answered with
  const external = []; // requests that tried to leave the server's origin
  const consoleErrors = [];

  const api = async (method, path, body) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return res;
  };

  const onSignal = (sig) => {
    server.stopNow();
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };

  before(async () => {
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    process.once('exit', () => server.stopNow());
    if (process.env.WARREN_E2E_URL) {
      base = process.env.WARREN_E2E_URL.replace(/\/$/, '');
      key = process.env.WARREN_E2E_API_KEY;
      assert.ok(key, 'WARREN_E2E_API_KEY is required with WARREN_E2E_URL');
    } else {
      await server.start();
      base = server.url;
      key = server.key;
    }
    assert.match(key, /^wrn_/, 'admin key looks like wrn_...');

    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install -y chromium`);
    profileDir = mkdtempSync(join(os.tmpdir(), 'warren-web-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1440, height: 900 },
      acceptDownloads: true,
    });
    // The browser may talk to the server's origin only, and to the port
    // hosts of the same listener (`{port}-{id}.localhost:<its port>`).
    const origin = new URL(base).origin;
    const ours = (url) => {
      if (url.startsWith('data:') || url.startsWith('blob:')) return true;
      const u = new URL(url);
      return u.origin === origin || (u.hostname.endsWith('.localhost') && u.port === new URL(base).port);
    };
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (ours(url)) return route.continue();
      external.push(url);
      return route.abort('blockedbyclient');
    });
    context.on('request', (req) => {
      const url = req.url();
      if (!ours(url) && !external.includes(url)) {
        external.push(url);
      }
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('websocket', (ws) => {
      const u = new URL(ws.url());
      if (u.host !== new URL(base).host) external.push(ws.url());
    });
    // confirm() is accepted; prompt() gets `promptAnswer` (or its default).
    page.on('dialog', (d) => void d.accept(d.type() === 'prompt' && promptAnswer !== null ? promptAnswer : undefined).catch(() => {}));
    page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(`console.error: ${m.text()}`);
    });
    page.setDefaultTimeout(30_000);
  });

  after(async () => {
    try {
      if (sandboxId && base) await api('DELETE', `/v1/sandboxes/${sandboxId}`).catch(() => {});
      await context?.close().catch(() => {});
    } finally {
      if (profileDir) rmSync(profileDir, { recursive: true, force: true });
      await server.stop();
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
      if (consoleErrors.length) console.log(`browser errors seen:\n  ${consoleErrors.join('\n  ')}`);
    }
  });

  /** Run a step; on failure save a screenshot next to the other results. */
  const step = (name, fn, timeout = 120_000, needsSandbox = false) =>
    test(name, { timeout }, async () => {
      if (needsSandbox) assert.ok(sandboxId, 'no sandbox: creating one failed');
      try {
        await fn();
      } catch (e) {
        const file = join(RESULTS, `failure-${name.replace(/[^a-z0-9]+/gi, '-')}.png`);
        await page?.screenshot({ path: file, fullPage: true }).catch(() => {});
        e.message += `\n(screenshot: ${file})`;
        throw e;
      }
    });

  const headState = () => page.locator('.detail-head [data-testid="sandbox-state"]');

  step('a wrong key is refused with the API error', async () => {
    await page.goto(`${base}/`);
    await page.getByLabel('API key', { exact: true }).fill('wrn_0000000000000000000000000000000000000000');
    await page.getByRole('button', { name: 'Log in' }).click();
    const err = page.getByTestId('login-error');
    await err.waitFor({ state: 'visible' });
    assert.match(await err.innerText(), /\S/);
  });

  step('log in with the admin key', async () => {
    await page.getByLabel('API key', { exact: true }).fill(key);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
    await page.getByRole('button', { name: 'Log out' }).waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem('warren.apiKey')), key);
  });

  step(
    'create a sandbox and watch it boot',
    async () => {
      const template = page.getByLabel('Template', { exact: true });
      await waitFor('templates in the dropdown', async () => (await template.locator('option').count()) > 0 && (await template.inputValue()) !== '');
      const values = await template.locator('option').evaluateAll((os) => os.map((o) => o.value));
      if (values.includes('debian')) await template.selectOption('debian');
      await page.getByLabel('CPUs', { exact: true }).fill('1');
      await page.getByLabel('Memory (MiB)', { exact: true }).fill('512');
      await page.getByLabel('Timeout (seconds)', { exact: true }).fill('900');
      await page.getByLabel('Metadata', { exact: true }).fill('suite=web-e2e');
      await page.getByRole('button', { name: 'Create sandbox' }).click();
      await page.getByTestId('create-progress').waitFor({ state: 'visible', timeout: 5_000 });
      const started = Date.now();
      sandboxId = await waitFor(
        'the sandbox page (or an error)',
        async () => {
          const m = /#\/sandboxes\/([^/]+)\/terminal/.exec(page.url());
          if (m) return decodeURIComponent(m[1]);
          const err = page.getByTestId('create-error');
          if (await err.isVisible()) throw Object.assign(new Error(`create failed: ${await err.innerText()}`), { fatal: true });
          return null;
        },
        BOOT_TIMEOUT_MS,
      ).catch(async (e) => {
        const err = page.getByTestId('create-error');
        if (await err.isVisible().catch(() => false)) throw new Error(`create failed: ${await err.innerText()}`);
        throw e;
      });
      console.log(`sandbox ${sandboxId} created in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      await waitFor('state running', async () => (await headState().innerText()) === 'running');
      const res = await api('GET', `/v1/sandboxes/${sandboxId}`);
      assert.equal(res.status, 200);
      const sb = await res.json();
      assert.equal(sb.state, 'running');
      assert.equal(sb.metadata?.suite, 'web-e2e');
    },
    BOOT_TIMEOUT_MS + 30_000,
  );

  step('terminal: echo hello', async () => {
    await page.getByRole('tab', { name: 'Terminal' }).click();
    const status = page.getByTestId('terminal-status');
    await waitFor('terminal connected', async () => {
      const s = await status.getAttribute('data-status');
      if (s === 'error' || s === 'closed') throw Object.assign(new Error(`terminal: ${await status.innerText()}`), { fatal: true });
      return s === 'connected';
    });
    // Wait for the shell's first output (its prompt) before typing.
    const lines = () =>
      page.evaluate(() =>
        [...document.querySelectorAll('[data-testid="terminal"] .xterm-rows > div')].map((d) =>
          (d.textContent ?? '').replace(/\u00a0/g, ' ').trimEnd(),
        ),
      );
    await waitFor('a shell prompt', async () => (await lines()).some((l) => l.trim() !== ''), 30_000);
    await page.locator('[data-testid="terminal"] .xterm').click();
    await page.keyboard.type('echo hello');
    await page.keyboard.press('Enter');
    await waitFor(
      'a terminal line that is exactly "hello"',
      async () => (await lines()).some((l) => l.trim() === 'hello'),
      30_000,
    ).catch(async (e) => {
      throw new Error(`${e.message}\nterminal shows:\n${(await lines()).filter(Boolean).join('\n')}`);
    });
    // A resize reaches the PTY: the shell sees the new width.
    await page.setViewportSize({ width: 1200, height: 860 });
    await sleep(300);
    await page.keyboard.type('stty size');
    await page.keyboard.press('Enter');
    const size = await waitFor('stty size output', async () => (await lines()).map((l) => /^(\d+) (\d+)$/.exec(l.trim())).find(Boolean), 15_000);
    assert.ok(Number(size[2]) > 80, `the PTY has the fitted width (stty size: ${size[0]})`);
    await page.setViewportSize({ width: 1440, height: 900 });
    await sleep(300);
    await page.screenshot({ path: join(RESULTS, 'console.png') });
  }, 120_000, true);

  step('run a command', async () => {
    await page.getByRole('tab', { name: 'Run command' }).click();
    await page.getByLabel('Command', { exact: true }).fill('echo out-$((6*7)); echo oops >&2; exit 3');
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    await waitFor('exec result', async () => (await page.getByTestId('exec-exit').count()) > 0, 60_000).catch(async (e) => {
      const err = page.getByTestId('exec-error');
      if (await err.isVisible()) throw new Error(`exec failed: ${await err.innerText()}`);
      throw e;
    });
    assert.equal((await page.getByTestId('exec-stdout').innerText()).trim(), 'out-42');
    assert.equal((await page.getByTestId('exec-stderr').innerText()).trim(), 'oops');
    assert.match(await page.getByTestId('exec-exit').innerText(), /exit code 3/);
  }, 120_000, true);

  step('files: upload, list, download, mkdir, delete', async () => {
    await page.getByRole('tab', { name: 'Files' }).click();
    const dir = await waitFor('a directory listing', async () => {
      const err = page.getByTestId('files-error');
      if (await err.isVisible()) throw Object.assign(new Error(await err.innerText()), { fatal: true });
      return (await page.locator('[data-testid="files-table"] tbody tr').count()) > 0 && page.getByLabel('Directory', { exact: true }).inputValue();
    });
    const content = `hello from the warren web e2e test ${Date.now()}\n`;
    await page.getByLabel('File to upload', { exact: true }).setInputFiles({ name: 'e2e-upload.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
    await page.getByRole('button', { name: 'Upload', exact: true }).click();
    const row = page.locator('[data-testid="file-row"][data-name="e2e-upload.txt"]');
    await row.waitFor({ state: 'visible' }).catch(async (e) => {
      const err = page.getByTestId('files-error');
      if (await err.isVisible()) throw new Error(`upload failed: ${await err.innerText()}`);
      throw e;
    });
    // The bytes arrived: read them back through the API.
    const path = `${dir.replace(/\/$/, '')}/e2e-upload.txt`;
    const res = await fetch(`${base}/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent(path)}`, {
      headers: { Authorization: `Bearer ${key}` },
    });
    assert.equal(res.status, 200, `GET /files?path=${path}`);
    assert.equal(await res.text(), content);
    // Download through the browser (fetch with the key, saved as a blob).
    const [download] = await Promise.all([page.waitForEvent('download'), row.getByRole('button', { name: /Download/ }).click()]);
    assert.equal(download.suggestedFilename(), 'e2e-upload.txt');
    const saved = await download.path();
    assert.equal(readFileSync(saved, 'utf8'), content);
    // mkdir, then delete it again.
    await page.getByLabel('New folder name', { exact: true }).fill('e2e-dir');
    await page.getByRole('button', { name: 'Create folder' }).click();
    const dirRow = page.locator('[data-testid="file-row"][data-name="e2e-dir"]');
    await dirRow.waitFor({ state: 'visible' });
    assert.equal(await dirRow.getAttribute('data-type'), 'dir');
    await dirRow.getByRole('button', { name: /Delete/ }).click();
    await dirRow.waitFor({ state: 'detached' });
  }, 120_000, true);

  step('network: show the policy, change it, refuse a bad rule', async () => {
    await page.getByRole('tab', { name: 'Network' }).click();
    const internet = page.getByLabel('Internet access', { exact: true });
    await waitFor('the policy loaded', async () => /loaded/.test(await page.getByTestId('network-status').innerText()));
    assert.equal(await internet.isChecked(), true, 'internet is on by default');
    await page.getByLabel('Allowed destinations', { exact: true }).fill('PyPI.org\n\n198.51.100.7');
    await page.getByLabel('Denied destinations', { exact: true }).fill('0.0.0.0/0');
    await page.getByRole('button', { name: 'Save policy' }).click();
    await waitFor('saved', async () => /saved/.test(await page.getByTestId('network-status').innerText()));
    const saved = await (await api('GET', `/v1/sandboxes/${sandboxId}/network`)).json();
    assert.deepEqual(saved.deny_out, ['0.0.0.0/0']);
    assert.equal(saved.allow_out.length, 2, JSON.stringify(saved));
    assert.ok(saved.allow_out.includes('pypi.org'), `rules come back in their normal form: ${JSON.stringify(saved)}`);
    // The form shows what the service holds.
    assert.equal(await page.getByLabel('Allowed destinations', { exact: true }).inputValue(), saved.allow_out.join('\n'));
    // A bad rule: the error names it, and the policy stays as it was.
    await page.getByLabel('Denied destinations', { exact: true }).fill('0.0.0.0/0\nnot a rule!');
    await page.getByRole('button', { name: 'Save policy' }).click();
    const err = page.getByTestId('network-error');
    await err.waitFor({ state: 'visible' });
    assert.match(await err.innerText(), /not a rule!/);
    const after = await (await api('GET', `/v1/sandboxes/${sandboxId}/network`)).json();
    assert.deepEqual(after, saved);
    // Back to the default, so later steps see an ordinary sandbox.
    const reset = await api('PUT', `/v1/sandboxes/${sandboxId}/network`, { internet: true, allow_out: [], deny_out: [] });
    assert.equal(reset.status, 200);
  }, 120_000, true);

  step('network: a server in the sandbox opens from its port link', async () => {
    const started = await api('POST', `/v1/sandboxes/${sandboxId}/processes`, {
      cmd: "mkdir -p /srv/e2e && echo 'hello from port 8000' > /srv/e2e/index.html && cd /srv/e2e && exec python3 -m http.server 8000 --bind 0.0.0.0",
    });
    assert.equal(started.status, 201, await started.text());
    const refresh = page.getByRole('button', { name: 'Refresh ports' });
    const link = page.getByTestId('port-link-8000');
    await waitFor('port 8000 listed with a link', async () => {
      await refresh.click();
      return (await link.count()) > 0;
    }, 60_000, 500);
    const href = await link.getAttribute('href');
    const sandbox = await (await api('GET', `/v1/sandboxes/${sandboxId}`)).json();
    assert.equal(href, `http://8000-${sandboxId}.${sandbox.domain}/?warren_token=${sandbox.access_token}`);
    // The browser opens it: the token moves into a cookie of that host.
    const app = await context.newPage();
    try {
      const resp = await app.goto(href);
      assert.equal(resp?.status(), 200);
      assert.equal(new URL(app.url()).search, '', 'the token left the address bar');
      assert.match(await app.locator('body').innerText(), /hello from port 8000/);
      const reload = await app.reload();
      assert.equal(reload?.status(), 200, 'the cookie opens it again');
    } finally {
      await app.close();
    }
    // Made public from the console, the port needs no token.
    await page.getByLabel('Port 8000 public', { exact: true }).check();
    await waitFor('the port is public', async () => {
      const sb = await (await api('GET', `/v1/sandboxes/${sandboxId}`)).json();
      return sb.public_ports.includes(8000);
    });
    await waitFor('the link lost its token', async () => !(await link.getAttribute('href')).includes('warren_token'));
    const reset = await api('PUT', `/v1/sandboxes/${sandboxId}/public-ports`, { ports: [] });
    assert.equal(reset.status, 200);
  }, 120_000, true);

  step('console log, timeout, pause and resume', async () => {
    // The guest kernel boots `quiet`: put a line on the serial console first.
    const marker = `warren-e2e-console-${Date.now()}`;
    const wrote = await api('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: `echo ${marker} > /dev/ttyS0` });
    assert.equal(wrote.status, 200, 'exec: echo > /dev/ttyS0');
    await page.getByRole('tab', { name: 'Console log' }).click();
    await waitFor('the marker in the console log', async () => {
      await page.getByRole('button', { name: 'Refresh log' }).click();
      return (await page.getByTestId('logs').innerText()).includes(marker);
    }, 20_000, 1000);

    await page.getByRole('tab', { name: 'Details' }).click();
    await page.getByLabel('Sandbox timeout (seconds)', { exact: true }).fill('1200');
    await page.getByRole('button', { name: 'Set timeout' }).click();
    await waitFor('timeout 1200 s in the details', async () => (await page.getByTestId('sandbox-details').innerText()).includes('1200 s'));
    const sb = await (await api('GET', `/v1/sandboxes/${sandboxId}`)).json();
    assert.equal(sb.timeout_secs, 1200);

    // Pause: the state becomes paused and the head says what was written.
    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    await waitFor('state paused', async () => {
      const err = page.getByTestId('action-error');
      if (await err.isVisible()) throw Object.assign(new Error(`pause failed: ${await err.innerText()}`), { fatal: true });
      return (await headState().innerText()) === 'paused';
    }, 120_000);
    assert.match(await page.getByTestId('action-result').innerText(), /^Paused: .+ written \(.+\), chain \d+, \d+ ms$/);
    const paused = await (await api('GET', `/v1/sandboxes/${sandboxId}`)).json();
    assert.equal(paused.state, 'paused');
    assert.ok(await page.getByRole('button', { name: 'Resume', exact: true }).isVisible());
    assert.ok(!(await page.getByRole('button', { name: 'Pause', exact: true }).isVisible()));

    // Resume: running again, and the terminal reconnects and works.
    await page.getByRole('button', { name: 'Resume', exact: true }).click();
    await waitFor('state running', async () => {
      const err = page.getByTestId('action-error');
      if (await err.isVisible()) throw Object.assign(new Error(`resume failed: ${await err.innerText()}`), { fatal: true });
      return (await headState().innerText()) === 'running';
    }, 120_000);
    await page.getByRole('tab', { name: 'Terminal' }).click();
    const status = page.getByTestId('terminal-status');
    await waitFor('terminal connected again', async () => {
      const s = await status.getAttribute('data-status');
      if (s === 'closed' || s === 'error') await page.getByRole('button', { name: 'Reconnect' }).click().catch(() => {});
      return s === 'connected';
    }, 60_000, 500);
    const lines = () =>
      page.evaluate(() =>
        [...document.querySelectorAll('[data-testid="terminal"] .xterm-rows > div')].map((d) => (d.textContent ?? '').replace(/\u00a0/g, ' ').trimEnd()),
      );
    await page.locator('[data-testid="terminal"] .xterm').click();
    // The shell may still be starting: retype until its answer shows.
    await waitFor('the terminal answers after resume', async () => {
      if ((await lines()).some((l) => l.trim() === 'resumed-42')) return true;
      await page.keyboard.type('echo resumed-$((6*7))');
      await page.keyboard.press('Enter');
      await sleep(1000);
      return (await lines()).some((l) => l.trim() === 'resumed-42');
    }, 45_000, 500).catch(async (e) => {
      throw new Error(`${e.message}\nterminal shows:\n${(await lines()).filter(Boolean).join('\n')}`);
    });
  }, 300_000, true);

  step('snapshot: take one, see it in the list and the create form, delete it', async () => {
    const name = `web-e2e-${Date.now().toString(36)}`;
    promptAnswer = name;
    try {
      await page.getByRole('button', { name: 'Snapshot', exact: true }).click();
      await waitFor('the snapshot result', async () => {
        const err = page.getByTestId('action-error');
        if (await err.isVisible()) throw Object.assign(new Error(`snapshot failed: ${await err.innerText()}`), { fatal: true });
        return (await page.getByTestId('action-result').innerText()).includes(`Snapshot ${name} created`);
      }, 180_000, 500);
    } finally {
      promptAnswer = null;
    }
    // A running sandbox is resumed after the copy.
    await waitFor('running after the snapshot', async () => (await headState().innerText()) === 'running', 60_000);
    const snap = await (await api('GET', `/v1/snapshots/${name}`)).json();
    assert.equal(snap.source_sandbox, sandboxId);

    await page.getByRole('link', { name: '← Sandboxes' }).click();
    const row = page.locator(`[data-testid="snapshot-row"][data-name="${name}"]`);
    await row.waitFor({ state: 'visible' });
    assert.match(await row.innerText(), new RegExp(sandboxId));
    // It is a template of the create form, which locks its size.
    await row.getByRole('button', { name: `New sandbox from ${name}` }).click();
    const template = page.getByLabel('Template', { exact: true });
    await waitFor('the snapshot selected as template', async () => (await template.inputValue()) === name);
    assert.ok(await page.getByLabel('Memory (MiB)', { exact: true }).isDisabled());
    await template.selectOption('debian');
    // Delete (confirm() is accepted): gone from the list and the form.
    await row.getByRole('button', { name: `Delete snapshot ${name}` }).click();
    await row.waitFor({ state: 'detached' });
    assert.equal((await api('GET', `/v1/snapshots/${name}`)).status, 404);
    await waitFor('the template gone from the form', async () =>
      !(await template.locator('option').evaluateAll((os) => os.map((o) => o.value))).includes(name),
    );
    // Back to the sandbox for the next step.
    await page.locator(`[data-testid="sandbox-row"][data-sandbox-id="${sandboxId}"] a`).first().click();
    await waitFor('the sandbox page', async () => (await headState().innerText()) === 'running');
    // Its terminal connects (before the next step kills the sandbox).
    await waitFor('terminal connected', async () => (await page.getByTestId('terminal-status').getAttribute('data-status')) === 'connected', 60_000);
  }, 300_000, true);

  step('kill the sandbox: state becomes stopped', async () => {
    await page.getByRole('button', { name: 'Kill', exact: true }).click(); // confirm() is accepted
    await waitFor('state stopped', async () => (await headState().innerText()) === 'stopped', 60_000);
    const sb = await (await api('GET', `/v1/sandboxes/${sandboxId}`)).json();
    assert.equal(sb.state, 'stopped');
    // The list shows it as stopped too.
    await page.getByRole('link', { name: '← Sandboxes' }).click();
    const row = page.locator(`[data-testid="sandbox-row"][data-sandbox-id="${sandboxId}"]`);
    await waitFor('stopped in the list', async () => (await row.getByTestId('sandbox-state').innerText()) === 'stopped');
    await page.getByLabel('Filter by state', { exact: true }).selectOption('running');
    await row.waitFor({ state: 'detached' });
    await page.getByLabel('Filter by state', { exact: true }).selectOption('');
    sandboxId = null;
  }, 120_000, true);

  step('Swagger UI at /docs works offline', async () => {
    const res = await fetch(`${base}/openapi.json`, { headers: { Authorization: `Bearer ${key}` } });
    assert.equal(res.status, 200, 'GET /openapi.json');
    const doc = await res.json();
    const title = doc.info?.title;
    assert.ok(title, 'openapi.json has info.title');
    const docs = await context.newPage();
    try {
      const resp = await docs.goto(`${base}/docs`);
      assert.equal(resp?.status(), 200, 'GET /docs');
      const shown = docs.locator('.swagger-ui .info .title');
      await shown.waitFor({ state: 'visible', timeout: 30_000 }).catch(async (e) => {
        throw new Error(`${e.message}\n/docs shows: ${(await docs.locator('body').innerText()).slice(0, 500)}`);
      });
      assert.ok((await shown.innerText()).includes(title), `Swagger UI shows "${title}"`);
      // At least one operation rendered from the document.
      await docs.locator('.opblock').first().waitFor({ state: 'visible' });
      await docs.screenshot({ path: join(RESULTS, 'docs.png') });
    } finally {
      await docs.close();
    }
    assert.deepEqual(external, [], 'no request may leave the server origin');
  });

  step('nothing left the server origin; no page errors', async () => {
    assert.deepEqual(external, []);
    const pageErrors = consoleErrors.filter((e) => e.startsWith('pageerror'));
    assert.deepEqual(pageErrors, []);
  });
});
