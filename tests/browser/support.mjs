// What the browser tests share: the gateway binary started and stopped, Chromium launched and
// killed, bounded waits, the admin metrics. Every wait is bounded, and nothing started here
// outlives the test process.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before } from 'node:test';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const here = dirname(fileURLToPath(import.meta.url));
export const GATEWAY_BIN = resolve(here, process.env.KSG_BIN || '../../target/debug/kafka-sse-gateway');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

export const STARTUP_TIMEOUT_MS = 20_000;
export const BROWSER_LAUNCH_TIMEOUT_MS = 30_000;
export const EVENTS_TIMEOUT_MS = 15_000;
export const SHUTDOWN_LIMIT_MS = 10_000;
export const TEST_TIMEOUT_MS = 60_000;
// Last resort if the test runner itself gets stuck: kill everything we started and exit.
// The browser suite runs its files one after another (scripts/browser-test.sh): each file's
// own limit.
const WATCHDOG_MS = 280_000;

/** Every gateway started by this file, so that nothing outlives it. */
const gateways = new Set();
let userDataDir;

function killLeftovers() {
  for (const gw of gateways) gw.kill();
  if (userDataDir) {
    killChromiumUsing(userDataDir);
    try {
      rmSync(userDataDir, { recursive: true, force: true });
    } catch {
      // a dying Chromium may still write there; it is only a temp dir
    }
  }
}

process.on('exit', killLeftovers);
for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) {
  process.once(sig, () => {
    console.error(`${sig}: killing the gateway and Chromium`);
    process.exit(128 + n); // runs killLeftovers
  });
}
const watchdog = setTimeout(() => {
  console.error(`watchdog: tests still running after ${WATCHDOG_MS} ms; killing everything`);
  process.exit(1);
}, WATCHDOG_MS);
watchdog.unref();

/** Resolves to `promise`'s value, or rejects after `ms` with a message naming `what`. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (async, returns a truthy value when done) until it passes or `ms` runs out. */
export async function pollUntil(ms, what, check, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    }
    await sleep(every);
  }
}

/**
 * Starts the gateway binary in demo mode and waits for its "serving SSE on ..." line.
 * Its environment has no KSG_* variable but the ones set here (and in `extraEnv`, which
 * overrides the defaults): the gateway refuses unknown KSG_* names (KSG_BIN included) and must
 * not see KSG_KAFKA_BROKERS.
 */
export async function startGateway(extraEnv = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KSG_')));
  Object.assign(env, {
    KSG_LISTEN: '127.0.0.1:0',
    KSG_ADMIN_LISTEN: '127.0.0.1:0',
    KSG_DEMO_TICKS_PER_SEC: '10',
    KSG_SHUTDOWN_GRACE_SECS: '5',
    // SIGTERM drains first (readiness off while streams go on); 1 s keeps the test short.
    KSG_DRAIN_DELAY_SECS: '1',
    NO_COLOR: '1',
    ...extraEnv,
  });
  // `null` in extraEnv removes a default.
  for (const [k, v] of Object.entries(env)) if (v === null) delete env[k];
  const child = spawn(GATEWAY_BIN, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const exited = new Promise((resolveExit) => {
    child.on('exit', (code, signal) => resolveExit({ code, signal, at: Date.now() }));
  });
  const gw = {
    child,
    exited,
    get log() {
      return log;
    },
    running: () => child.exitCode === null && child.signalCode === null,
    kill() {
      if (gw.running()) child.kill('SIGKILL');
    },
  };
  gateways.add(gw);

  const ready = new Promise((resolveReady, rejectReady) => {
    const onData = (chunk) => {
      log += chunk.toString();
      const m = log.match(
        /serving SSE on (https?):\/\/[^\s,]+:(\d+), admin on http:\/\/[^\s,]+:(\d+)/,
      );
      if (m) resolveReady({ scheme: m[1], port: Number(m[2]), adminPort: Number(m[3]) });
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (chunk) => {
      log += chunk.toString();
    });
    child.on('error', (e) => rejectReady(new Error(`cannot run ${GATEWAY_BIN}: ${e.message}`)));
    exited.then(({ code, signal }) =>
      rejectReady(new Error(`gateway exited early (code ${code}, signal ${signal}):\n${log}`)),
    );
  });
  try {
    Object.assign(gw, await within(STARTUP_TIMEOUT_MS, 'gateway start-up line', ready));
  } catch (e) {
    gw.kill();
    if (!e.message.includes(log)) e.message += `\n--- gateway output ---\n${log}`;
    throw e;
  }
  assert.equal(gw.scheme, 'https', 'the gateway serves TLS (self-signed unless given a certificate)');
  gw.url = `https://127.0.0.1:${gw.port}/`;
  return gw;
}

/** An HS256 JSON Web Token over `claims`, as an identity provider would issue it. */
export function mintToken(secret, claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

/** Kills the gateway if it still runs and waits (bounded) for it to be gone. */
export async function stopGateway(gw) {
  if (!gw) return;
  gw.kill();
  await within(5_000, 'gateway exit after SIGKILL', gw.exited).catch(() => {});
  gateways.delete(gw);
}

/** The admin /metrics text, parsed into { 'name{labels}': number }. */
export async function metrics(gw) {
  const res = await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`, {
    signal: AbortSignal.timeout(5_000),
  });
  assert.equal(res.status, 200);
  const out = {};
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

/** Pids of processes whose command line contains `needle` (ours: a unique temp dir). */
function pidsWithArg(needle) {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(needle)) pids.push(Number(entry));
    } catch {
      // gone already
    }
  }
  return pids;
}

/** Process group of `pid`, or null. */
function pgidOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  } catch {
    return null;
  }
}

/**
 * SIGKILLs the Chromium that uses `dir` as its profile: Playwright starts it as the leader of
 * its own process group, so the whole group goes (renderers, GPU and utility processes too).
 */
export function killChromiumUsing(dir) {
  const pids = pidsWithArg(`--user-data-dir=${dir}`);
  const groups = new Set(pids.map(pgidOf).filter((g) => g && pids.includes(g)));
  for (const target of [...[...groups].map((g) => -g), ...pids]) {
    try {
      process.kill(target, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}


/** Chromium (headless, TLS errors ignored: the gateways here serve self-signed certificates),
 * with a profile of its own that `closeBrowser` removes. */
export async function launchBrowser() {
  userDataDir = mkdtempSync(join(tmpdir(), 'ksg-chromium-'));
  const context = await within(
    BROWSER_LAUNCH_TIMEOUT_MS,
    `launching ${CHROMIUM}`,
    chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      ignoreHTTPSErrors: true,
      timeout: BROWSER_LAUNCH_TIMEOUT_MS,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--ignore-certificate-errors',
      ],
    }),
  );
  context.setDefaultTimeout(EVENTS_TIMEOUT_MS);
  return context;
}

/** Stops every gateway still running, closes Chromium and removes its profile. */
export async function closeBrowser(context) {
  for (const gw of [...gateways]) await stopGateway(gw);
  if (context) await within(10_000, 'closing Chromium', context.close()).catch(() => {});
  if (userDataDir) {
    killChromiumUsing(userDataDir);
    await sleep(200);
    rmSync(userDataDir, { recursive: true, force: true, maxRetries: 3 });
  }
}

/** Inside a `describe`: Chromium for its tests (`.context`), launched before them and closed,
 * with every gateway still running, after them. */
export function useBrowser() {
  const browser = {};
  before(async () => {
    browser.context = await launchBrowser();
  }, { timeout: BROWSER_LAUNCH_TIMEOUT_MS + 5_000 });
  after(async () => {
    await closeBrowser(browser.context);
  }, { timeout: 20_000 });
  return browser;
}

/**
 * Page-side, installed with `page.addInitScript(FOLLOW_ACROSS_EXPIRY)`: follows an EventSource
 * (the browser's own, or a package's) across one token expiry. It counts opens, collects the
 * ticks' numbers and awaits `refresh()` on `event: expiring`. It resolves to
 * `{ ns, seen, opens, origin }` once 15 ticks came after the reconnect, and rejects if the
 * source closes for good.
 */
function followAcrossExpiry(source, refresh) {
  return new Promise((resolve, reject) => {
    const ns = [];
    const seen = [];
    let opens = 0;
    let atReopen = 0;
    source.addEventListener('open', () => {
      opens += 1;
      atReopen = ns.length;
      seen.push('open');
    });
    source.addEventListener('message', (e) => {
      ns.push(JSON.parse(e.data).n);
      // Enough ticks after the reconnect to show the stream goes on.
      if (opens >= 2 && ns.length >= atReopen + 15) {
        source.close();
        resolve({ ns, seen, opens, origin: location.origin });
      }
    });
    source.addEventListener('expiring', async (e) => {
      seen.push(`expiring ${e.lastEventId ? 'with' : 'without'} lastEventId`);
      await refresh();
    });
    source.addEventListener('expired', () => seen.push('expired'));
    source.addEventListener('error', (e) => {
      seen.push(`error ${source.readyState}${e.message ? ` ${e.message}` : ''}`);
      // 2: CLOSED, in every EventSource.
      if (source.readyState === 2) reject(new Error(`the stream was closed for good: ${seen.join(', ')}`));
    });
  });
}

export const FOLLOW_ACROSS_EXPIRY = `window.followAcrossExpiry = ${followAcrossExpiry}`;
