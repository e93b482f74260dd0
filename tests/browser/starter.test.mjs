// End-to-end: the demo starter page in real headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core. Run with `node --test` from this folder, or scripts/browser-test.sh.
//
// Each test starts its own gateway in demo mode (in-process Kafka mock, self-signed TLS) on
// ephemeral ports, and every wait is bounded: no test can hang, and the gateway and the browser
// are killed whatever happens.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const GATEWAY_BIN = resolve(here, process.env.KSG_BIN || '../../target/debug/kafka-sse-gateway');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SYMBOLS = ['GOOG', 'AAPL'];
const ROUTE = '/{topic}/{key}';

const STARTUP_TIMEOUT_MS = 20_000;
const BROWSER_LAUNCH_TIMEOUT_MS = 30_000;
const EVENTS_TIMEOUT_MS = 15_000;
const SHUTDOWN_LIMIT_MS = 10_000;
const TEST_TIMEOUT_MS = 60_000;
// Last resort if the test runner itself gets stuck: kill everything we started and exit.
const WATCHDOG_MS = 170_000;

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
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (async, returns a truthy value when done) until it passes or `ms` runs out. */
async function pollUntil(ms, what, check, every = 100) {
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
async function startGateway(extraEnv = {}) {
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
  assert.equal(gw.scheme, 'https', 'demo mode serves TLS');
  gw.url = `https://127.0.0.1:${gw.port}/`;
  return gw;
}

/** An HS256 JSON Web Token over `claims`, as an identity provider would issue it. */
function mintToken(secret, claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

/** Kills the gateway if it still runs and waits (bounded) for it to be gone. */
async function stopGateway(gw) {
  if (!gw) return;
  gw.kill();
  await within(5_000, 'gateway exit after SIGKILL', gw.exited).catch(() => {});
  gateways.delete(gw);
}

/** The admin /metrics text, parsed into { 'name{labels}': number }. */
async function metrics(gw) {
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
function killChromiumUsing(dir) {
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

/** window.ksg, plus each stream's visible state ("open", "connecting", "closed"). */
function pageState(page) {
  return within(
    5_000,
    'reading window.ksg',
    page.evaluate(() => {
      const out = {};
      for (const [symbol, s] of Object.entries(window.ksg || {})) {
        out[symbol] = {
          ...s,
          seqs: [...s.seqs],
          ns: [...s.ns],
          state: document.querySelector(`#stream-${symbol} .state`)?.textContent,
        };
      }
      return out;
    }),
  );
}

function summary(stats) {
  return SYMBOLS.map((s) => {
    const x = stats[s];
    return `${s}: ${x.messages} messages, ${x.deletes} deletes, ${x.opens} opens, ${x.errors} errors, state ${x.state}`;
  }).join('; ');
}

/** Where `ns` is not exactly consecutive (each = previous + 1), as readable text; '' if it is. */
function breaksIn(ns) {
  const breaks = [];
  for (let i = 1; i < ns.length; i++) {
    if (ns[i] !== ns[i - 1] + 1) breaks.push(`#${i}: ${ns[i - 1]} -> ${ns[i]}`);
  }
  return breaks.join(', ');
}

describe('demo starter page in headless Chromium', { timeout: 150_000 }, () => {
  let context;

  before(async () => {
    userDataDir = mkdtempSync(join(tmpdir(), 'ksg-chromium-'));
    context = await within(
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
  }, { timeout: BROWSER_LAUNCH_TIMEOUT_MS + 5_000 });

  after(async () => {
    for (const gw of [...gateways]) await stopGateway(gw);
    if (context) await within(10_000, 'closing Chromium', context.close()).catch(() => {});
    if (userDataDir) {
      killChromiumUsing(userDataDir);
      await sleep(200);
      rmSync(userDataDir, { recursive: true, force: true, maxRetries: 3 });
    }
  }, { timeout: 20_000 });

  /** Opens the starter page of `gw` in a new tab; collects page errors for diagnostics. */
  async function openStarter(gw) {
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      // Failed loads are caught (with their URL) by the response handler below.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
        problems.push(`console: ${m.text()}`);
      }
    });
    page.on('response', (r) => {
      // The gateway serves no favicon; Chromium asks for one anyway.
      if (r.status() >= 400 && new URL(r.url()).pathname !== '/favicon.ico') {
        problems.push(`HTTP ${r.status()} for ${r.url()}`);
      }
    });
    // Chromium's own view of each response: protocol and the connection it came on.
    const wire = {};
    const cdp = await context.newCDPSession(page);
    cdp.on('Network.responseReceived', ({ response: r }) => {
      wire[new URL(r.url).pathname] = { protocol: r.protocol, connectionId: r.connectionId };
    });
    await cdp.send('Network.enable');
    const response = await page.goto(gw.url, { waitUntil: 'load', timeout: EVENTS_TIMEOUT_MS });
    assert.ok(response, 'navigation produced a response');
    assert.equal(response.status(), 200, 'starter page status');
    return { page, problems, wire };
  }

  /** Waits until every symbol's stream has opened and seen at least `n` messages. */
  async function waitForMessages(page, n) {
    await page.waitForFunction(
      ({ symbols, n }) =>
        symbols.every((s) => window.ksg?.[s] && window.ksg[s].opens >= 1 && window.ksg[s].messages >= n),
      { symbols: SYMBOLS, n },
      { polling: 100, timeout: EVENTS_TIMEOUT_MS },
    );
  }

  test('page loads over h2 and both EventSources receive increasing ticks', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const started = Date.now();
    const gw = await startGateway();
    let page;
    let problems = [];
    try {
      let wire;
      ({ page, problems, wire } = await openStarter(gw));
      const protocol = await page.evaluate(
        () => performance.getEntriesByType('navigation')[0]?.nextHopProtocol,
      );
      assert.equal(protocol, 'h2', 'starter page negotiated HTTP/2');

      await waitForMessages(page, 5);
      const stats = await pageState(page);
      for (const symbol of SYMBOLS) {
        const s = stats[symbol];
        assert.ok(s.opens >= 1, `${symbol} opened`);
        assert.ok(s.messages >= 5, `${symbol} got >= 5 messages (got ${s.messages})`);
        assert.equal(s.seqs.length, s.messages, `${symbol}: one seq per message`);
        assert.equal(s.ns.length, s.messages, `${symbol}: one n per message`);
        assert.ok(s.ns.every(Number.isInteger), `${symbol} ns are integers: ${s.ns.join(',')}`);
        assert.equal(breaksIn(s.ns), '', `${symbol} ns are consecutive: ${s.ns.join(',')}`);
        for (const [i, seq] of s.seqs.entries()) {
          assert.ok(Number.isInteger(seq), `${symbol} seq #${i} is an integer (${seq})`);
          if (i > 0) {
            assert.ok(seq > s.seqs[i - 1], `${symbol} seqs strictly increase: ${s.seqs.join(',')}`);
          }
        }
        assert.equal(typeof s.lastEventId, 'string');
        assert.notEqual(s.lastEventId, '', `${symbol} has a lastEventId`);
        assert.equal(s.state, 'open', `${symbol} stream shown as open`);
      }

      // Both streams came over HTTP/2, on one connection (as the page says). This is checked
      // from Chromium's side: the gateway's connection count cannot show it, as Chromium often
      // preconnects a second TLS connection that it then leaves idle or resets.
      const streams = SYMBOLS.map((s) => wire[`/stock-prices/${s}`]);
      for (const [i, w] of streams.entries()) {
        assert.ok(w, `Chromium saw the response of /stock-prices/${SYMBOLS[i]}`);
        assert.equal(w.protocol, 'h2', `/stock-prices/${SYMBOLS[i]} over HTTP/2`);
      }
      assert.equal(streams[0].connectionId, streams[1].connectionId, 'both streams on one connection');

      let seen;
      const m = await pollUntil(5_000, `2 streams opened on ${ROUTE}`, async () => {
        const m = await metrics(gw);
        seen = JSON.stringify(
          Object.fromEntries(Object.entries(m).filter(([k]) => /^ksg_(streams|connections)/.test(k))),
        );
        return m[`ksg_streams_opened_total{route="${ROUTE}"}`] >= 2 ? m : null;
      }).catch((e) => {
        throw new Error(`${e.message}; metrics: ${seen}`);
      });
      assert.equal(m[`ksg_streams_opened_total{route="${ROUTE}"}`], 2, 'exactly 2 streams opened');
      assert.equal(m[`ksg_streams_open{route="${ROUTE}"}`], 2, '2 streams open now');
      assert.deepEqual(problems, [], 'no page errors');

      t.diagnostic(
        `h2 page; ${summary(stats)}; metrics: opened ${m[`ksg_streams_opened_total{route="${ROUTE}"}`]}, ` +
          `streams on connection ${streams[0].connectionId} (page on ${wire['/']?.connectionId}; ` +
          `gateway: ${m.ksg_connections_open} open, ${m.ksg_connections_accepted_total} accepted), ` +
          `events sent ${m['ksg_events_sent_total{topic="stock-prices"}']}; ${Date.now() - started} ms`,
      );
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}\n--- page problems ---\n${problems.join('\n')}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });

  test('SIGTERM ends the streams and the gateway exits 0 within 10 s', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const started = Date.now();
    const gw = await startGateway();
    let page;
    let problems = [];
    try {
      ({ page, problems } = await openStarter(gw));
      await waitForMessages(page, 3);
      const beforeStop = await pageState(page);
      for (const symbol of SYMBOLS) {
        assert.equal(beforeStop[symbol].errors, 0, `${symbol}: no error before SIGTERM`);
      }

      const signalled = Date.now();
      assert.ok(gw.child.kill('SIGTERM'), 'SIGTERM delivered');
      const exit = await within(SHUTDOWN_LIMIT_MS, 'gateway exit after SIGTERM', gw.exited);
      const shutdownMs = exit.at - signalled;
      assert.equal(exit.signal, null, `gateway exited by itself, not by signal ${exit.signal}`);
      assert.equal(exit.code, 0, 'gateway exit code');

      await page.waitForFunction(
        (symbols) => symbols.every((s) => window.ksg[s].errors >= 1),
        SYMBOLS,
        { polling: 100, timeout: EVENTS_TIMEOUT_MS },
      );
      const afterStop = await pageState(page);
      for (const symbol of SYMBOLS) {
        assert.ok(afterStop[symbol].errors >= 1, `${symbol} reported the lost stream`);
        assert.notEqual(afterStop[symbol].state, 'open', `${symbol} no longer shown as open`);
      }
      const drained = /stopped drained=(\w+)/.exec(gw.log)?.[1] ?? '?';
      t.diagnostic(
        `exit code ${exit.code} ${shutdownMs} ms after SIGTERM (drained=${drained}); ` +
          `before: ${summary(beforeStop)}; after: ${summary(afterStop)}; ${Date.now() - started} ms`,
      );
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}\n--- page problems ---\n${problems.join('\n')}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });

  test('the server ends streams, the browser reconnects with Last-Event-ID and loses nothing', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const started = Date.now();
    const MIN_OPENS = 4; // so at least 3 streams ended by the server, and 3 reconnects
    const MIN_MESSAGES = 20;
    const gw = await startGateway({
      KSG_STREAM_MAX_SECS: '1',
      KSG_RETRY_MS: '200',
      KSG_DEMO_TICKS_PER_SEC: '10',
    });
    let page;
    let problems = [];
    try {
      ({ page, problems } = await openStarter(gw));
      await page
        .waitForFunction(
          ({ symbols, opens, messages }) =>
            symbols.every(
              (s) => window.ksg?.[s] && window.ksg[s].opens >= opens && window.ksg[s].messages >= messages,
            ),
          { symbols: SYMBOLS, opens: MIN_OPENS, messages: MIN_MESSAGES },
          { polling: 100, timeout: 20_000 },
        )
        .catch(async (e) => {
          const now = await pageState(page).catch(() => null);
          throw new Error(`${e.message}; page: ${now ? summary(now) : '(unreadable)'}`);
        });
      const stats = await pageState(page);
      for (const symbol of SYMBOLS) {
        const s = stats[symbol];
        assert.ok(s.opens >= MIN_OPENS, `${symbol} opened >= ${MIN_OPENS} times (got ${s.opens})`);
        assert.ok(s.messages >= MIN_MESSAGES, `${symbol} got >= ${MIN_MESSAGES} messages (got ${s.messages})`);
        assert.ok(s.errors >= MIN_OPENS - 1, `${symbol}: >= ${MIN_OPENS - 1} streams lost (errors ${s.errors})`);
        assert.equal(s.ns.length, s.messages, `${symbol}: one n per message`);
        assert.ok(s.ns.every(Number.isInteger), `${symbol} ns are integers: ${s.ns.join(',')}`);
        // Across every reconnect: no tick lost (a gap) and none delivered twice (a repeat).
        assert.equal(breaksIn(s.ns), '', `${symbol} ns are exactly consecutive: ${s.ns.join(',')}`);
        for (let i = 1; i < s.seqs.length; i++) {
          assert.ok(s.seqs[i] > s.seqs[i - 1], `${symbol} seqs strictly increase: ${s.seqs.join(',')}`);
        }
        assert.notEqual(s.lastEventId, '', `${symbol} has a lastEventId`);
      }

      // The server ended the streams (not the browser or the network), and each reconnect resumed
      // from the replay ring: the browser sent Last-Event-ID and the gateway used it.
      const wanted = SYMBOLS.length * (MIN_OPENS - 1);
      const expiredKey = 'ksg_streams_expired_total';
      const memoryKey = 'ksg_resumes_total{source="memory"}';
      let seen;
      const m = await pollUntil(5_000, `>= ${wanted} expired streams and memory resumes`, async () => {
        const m = await metrics(gw);
        seen = JSON.stringify(
          Object.fromEntries(
            Object.entries(m).filter(([k]) => /^ksg_(streams|resumes|gaps|slow_stream)/.test(k)),
          ),
        );
        return m[expiredKey] >= wanted && m[memoryKey] >= wanted ? m : null;
      }).catch((e) => {
        throw new Error(`${e.message}; metrics: ${seen}`);
      });
      assert.ok(m[expiredKey] >= wanted, `${expiredKey} >= ${wanted} (got ${m[expiredKey]})`);
      assert.ok(m[memoryKey] >= wanted, `${memoryKey} >= ${wanted} (got ${m[memoryKey]})`);
      assert.deepEqual(problems, [], 'no page errors');

      const perSymbol = SYMBOLS.map((symbol) => {
        const s = stats[symbol];
        return (
          `${symbol}: ${s.opens - 1} reconnects, ${s.messages} messages, ${s.deletes} deletes, ` +
          `n ${s.ns[0]}..${s.ns[s.ns.length - 1]}`
        );
      }).join('; ');
      t.diagnostic(
        `${perSymbol}; metrics: expired ${m[expiredKey]}, resumes memory ${m[memoryKey]} ` +
          `kafka ${m['ksg_resumes_total{source="kafka"}']}, ` +
          `opened ${m[`ksg_streams_opened_total{route="${ROUTE}"}`]}; ${Date.now() - started} ms`,
      );
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}\n--- page problems ---\n${problems.join('\n')}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });
  test('a cookie token expires mid-stream; the page refreshes it and resumes without loss', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const secret = 'browser-test-secret-0123456789abcdef';
    const gw = await startGateway({
      KSG_AUTH: 'jwt',
      KSG_AUTH_JWT_SECRET: secret,
      KSG_AUTH_COOKIE: 'ksg_token',
      KSG_AUTH_EXPIRY_NOTICE_SECS: '2',
      KSG_RETRY_MS: '300',
    });
    const token = (secs) =>
      mintToken(secret, {
        sub: 'browser',
        exp: Math.floor(Date.now() / 1000) + secs,
        ksg: { subscribe: ['/stock-prices/*'] },
      });
    let page;
    try {
      // The first token lives 5 s: the notice comes at 3 s, the end at 5 s.
      await context.addCookies([{ name: 'ksg_token', value: token(5), url: gw.url }]);
      page = await context.newPage();
      // Any page of the gateway's origin will do; the stream is the page's own.
      await page.goto(`${gw.url}app`, { timeout: EVENTS_TIMEOUT_MS });
      // The application's refresh endpoint, as the page would call it.
      await page.exposeFunction('freshToken', () => token(300));
      const got = await within(
        EVENTS_TIMEOUT_MS + 10_000,
        'events across the token expiry',
        page.evaluate(
          () =>
            new Promise((resolve, reject) => {
              const ns = [];
              const seen = [];
              let opens = 0;
              let atReopen = 0;
              const stream = new EventSource('/stock-prices/GOOG');
              stream.addEventListener('open', () => {
                opens += 1;
                atReopen = ns.length;
                seen.push('open');
              });
              stream.addEventListener('message', (e) => {
                ns.push(JSON.parse(e.data).n);
                // Enough ticks after the reconnect to show the stream goes on.
                if (opens >= 2 && ns.length >= atReopen + 15) {
                  stream.close();
                  resolve({ ns, seen, opens });
                }
              });
              stream.addEventListener('expiring', async (e) => {
                seen.push(`expiring ${e.lastEventId ? 'with' : 'without'} lastEventId`);
                const fresh = await window.freshToken();
                document.cookie = `ksg_token=${fresh}; path=/; secure; samesite=strict`;
              });
              stream.addEventListener('expired', () => seen.push('expired'));
              stream.addEventListener('error', () => {
                seen.push(`error ${stream.readyState}`);
                if (stream.readyState === EventSource.CLOSED) {
                  reject(new Error(`the stream was closed for good: ${seen.join(', ')}`));
                }
              });
            }),
        ),
      );
      assert.equal(got.opens, 2, `one reconnect after the expiry: ${got.seen.join(', ')}`);
      const i = got.seen.findIndex((x) => x.startsWith('expiring'));
      assert.ok(i > 0 && got.seen.indexOf('expired') > i, `notice, then the end: ${got.seen.join(', ')}`);
      assert.equal(breaksIn(got.ns), '', `ticks are exactly consecutive across the reconnect: ${got.ns.join(',')}`);
      const m = await metrics(gw);
      assert.equal(m['ksg_streams_token_expired_total'], 1);
      assert.equal(m['ksg_auth_refused_total{reason="expired"}'], 0, 'the reconnect carried the fresh cookie');
      t.diagnostic(`${got.ns.length} ticks n ${got.ns[0]}..${got.ns[got.ns.length - 1]}; ${got.seen.join(', ')}`);
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await context.clearCookies();
      await stopGateway(gw);
    }
  });
});
