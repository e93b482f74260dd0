// End-to-end: the demo starter page in real headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core. Run with `node --test` from this folder, or scripts/browser-test.sh.
//
// Each test starts its own gateway in demo mode (in-process Kafka mock, self-signed TLS) on
// ephemeral ports, and every wait is bounded: no test can hang, and the gateway and the browser
// are killed whatever happens.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readFile } from 'node:fs';
import { createServer } from 'node:http';
import { join, resolve } from 'node:path';
import {
  EVENTS_TIMEOUT_MS,
  FOLLOW_ACROSS_EXPIRY,
  SHUTDOWN_LIMIT_MS,
  TEST_TIMEOUT_MS,
  here,
  useBrowser,
  metrics,
  mintToken,
  pollUntil,
  startGateway,
  stopGateway,
  within,
} from './support.mjs';

const SYMBOLS = ['GOOG', 'AAPL'];
// The gateways' HS256 secret in the tests with KSG_AUTH=jwt.
const SECRET = 'browser-test-secret-0123456789abcdef';

/** A token for the stock-prices key streams that lives `secs` seconds more. */
function token(secs) {
  return mintToken(SECRET, {
    sub: 'browser',
    exp: Math.floor(Date.now() / 1000) + secs,
    ksg: { subscribe: ['/stock-prices/*'] },
  });
}
const ROUTE = '/{topic}/{key}';
// Screenshots of the page, kept as test artifacts.
const ARTIFACTS = resolve(here, process.env.KSG_BROWSER_ARTIFACTS || '../../target/browser-artifacts');

/** Saves a screenshot of `page` as `name` in ARTIFACTS. */
async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await within(10_000, `screenshot ${name}`, page.screenshot({ path: join(ARTIFACTS, name), fullPage: true }));
}

/** Runs a copied curl command line (words split on spaces) for 2 s; returns what it printed. */
function runCurl(commandLine) {
  const [command, ...args] = commandLine.split(' ');
  assert.equal(command, 'curl');
  return new Promise((resolveRun) => {
    // --max-time ends the stream: curl then exits 28, with the output so far.
    execFile(command, ['--max-time', '2', ...args], { timeout: 10_000 }, (_error, stdout) => resolveRun(stdout));
  });
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

/** What a page that followed a stream across its token's expiry (`followAcrossExpiry`) must
 * have seen: one reconnect after the notice and the end, and every tick exactly once; and the
 * gateway one stream ended by expiry. Returns the gateway's metrics. */
async function assertResumedAcrossExpiry(got, gw) {
  assert.equal(got.opens, 2, `one reconnect after the expiry: ${got.seen.join(', ')}`);
  const i = got.seen.findIndex((x) => x.startsWith('expiring'));
  assert.ok(i > 0 && got.seen.indexOf('expired') > i, `notice, then the end: ${got.seen.join(', ')}`);
  assert.equal(breaksIn(got.ns), '', `ticks are exactly consecutive across the reconnect: ${got.ns.join(',')}`);
  const m = await metrics(gw);
  assert.equal(m['ksg_streams_token_expired_total'], 1);
  return m;
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
  const browser = useBrowser();

  /** Opens the starter page of `gw` in a new tab; collects page errors for diagnostics. */
  async function openStarter(gw) {
    const page = await browser.context.newPage();
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
    const cdp = await browser.context.newCDPSession(page);
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

      // The reversed lists leave room for their numbers ("50." is the widest), in the page's
      // own font.
      const room = await page.evaluate(() => {
        const ol = document.querySelector('#stream-GOOG ol');
        const style = getComputedStyle(ol);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = style.font;
        return { padding: parseFloat(style.paddingLeft), widest: ctx.measureText('50. ').width };
      });
      assert.ok(room.padding >= room.widest, `list numbers fit: ${JSON.stringify(room)}`);
      // The snippets name this stream, and the curl one works as pasted.
      const snippets = await page.evaluate(() => ({
        curl: document.querySelector('#stream-GOOG .curl').textContent,
        js: document.querySelector('#stream-GOOG .js').textContent,
      }));
      const origin = gw.url.replace(/\/$/, '');
      assert.equal(snippets.curl, `curl -N -k ${origin}/stock-prices/GOOG`);
      assert.ok(snippets.js.includes(`new EventSource('${origin}/stock-prices/GOOG')`), snippets.js);
      const pasted = await runCurl(snippets.curl);
      assert.ok(/^retry: \d+\nid: \S+\n\n/.test(pasted), `the stream's preamble: ${pasted.slice(0, 200)}`);
      assert.ok(pasted.includes('\ndata: {'), `a tick: ${pasted.slice(0, 400)}`);
      await page.locator('#stream-GOOG details').evaluate((d) => (d.open = true));
      await screenshot(page, 'starter-streaming.png');

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
  test('with KSG_AUTH=jwt and no token, each box says why its stream closed', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await startGateway({
      KSG_AUTH: 'jwt',
      KSG_AUTH_JWT_SECRET: SECRET,
    });
    let page;
    try {
      page = await browser.context.newPage();
      await page.goto(gw.url, { timeout: EVENTS_TIMEOUT_MS });
      await page.waitForFunction(
        (symbols) => symbols.every((s) => window.ksg?.[s]?.closedStatus === 401),
        SYMBOLS,
        { polling: 100, timeout: EVENTS_TIMEOUT_MS },
      );
      for (const symbol of SYMBOLS) {
        const box = await page.evaluate((s) => ({
          state: document.querySelector(`#stream-${s} .state`).textContent,
          hint: document.querySelector(`#stream-${s} .hint`).textContent,
        }), symbol);
        assert.equal(box.state, 'closed', symbol);
        assert.match(box.hint, /needs a token \(KSG_AUTH=jwt\)/, `${symbol}: ${box.hint}`);
        assert.match(box.hint, /Authorization: Bearer/, `${symbol}: ${box.hint}`);
      }
      await screenshot(page, 'starter-jwt-refused.png');
      const m = await metrics(gw);
      assert.ok(m['ksg_auth_refused_total{reason="missing_token"}'] >= 2, 'the refusals are counted');
      t.diagnostic(`both boxes explain the 401; screenshots in ${ARTIFACTS}`);
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });

  test('cross-site, a fetch-based client (the eventsource package) sends the token as a header, refreshes it and resumes without loss', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    // The page comes from another site than the gateway's (localhost against 127.0.0.1): no
    // cookie of the gateway's would reach it, so the token goes in a header. The app's server
    // is a real one on loopback (Chromium lets only loopback pages fetch from loopback): a page
    // with an import map, and the package and its one dependency as the app would serve them.
    const modules = resolve(here, 'node_modules');
    const app = createServer((request, response) => {
      const path = new URL(request.url, 'http://localhost').pathname;
      if (path.startsWith('/vendor/')) {
        const file = resolve(modules, path.slice('/vendor/'.length));
        if (!file.startsWith(modules + '/')) return response.writeHead(404).end();
        return readFile(file, (error, body) =>
          error ? response.writeHead(404).end() : response.writeHead(200, { 'content-type': 'text/javascript' }).end(body),
        );
      }
      response.writeHead(200, { 'content-type': 'text/html' }).end(
        '<!doctype html><script type="importmap">{"imports":{' +
          '"eventsource":"/vendor/eventsource/dist/index.js",' +
          '"eventsource-parser":"/vendor/eventsource-parser/dist/index.js"}}</script>',
      );
    });
    await new Promise((listening) => app.listen(0, '127.0.0.1', listening));
    const APP = `http://localhost:${app.address().port}`;
    const gw = await startGateway({
      KSG_AUTH: 'jwt',
      KSG_AUTH_JWT_SECRET: SECRET,
      KSG_AUTH_EXPIRY_NOTICE_SECS: '2',
      KSG_RETRY_MS: '300',
      KSG_CORS_ORIGINS: APP,
    });
    let page;
    try {
      page = await browser.context.newPage();
      await page.addInitScript(FOLLOW_ACROSS_EXPIRY);
      await page.goto(`${APP}/`, { timeout: EVENTS_TIMEOUT_MS });
      // The app's token endpoint: the first token lives 5 s, the next ones 5 minutes.
      let issued = 0;
      await page.exposeFunction('getToken', () => token(issued++ === 0 ? 5 : 300));
      const got = await within(
        EVENTS_TIMEOUT_MS + 10_000,
        'events across the token expiry',
        page.evaluate(
          async (url) => {
            const { EventSource } = await import('eventsource');
            // As in the README.
            let token = await window.getToken();
            const source = new EventSource(url, {
              fetch: (input, init) =>
                fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
            });
            return window.followAcrossExpiry(source, async () => {
              token = await window.getToken();
            });
          },
          `${gw.url}stock-prices/GOOG`,
        ),
      );
      assert.equal(got.origin, APP, 'the page is on another site than the gateway');
      const m = await assertResumedAcrossExpiry(got, gw);
      assert.equal(m['ksg_auth_refused_total{reason="missing_token"}'], 0, 'every request carried the header');
      assert.equal(m['ksg_auth_refused_total{reason="expired"}'], 0, 'the reconnect carried the fresh token');
      assert.ok(m['ksg_resumes_total{source="memory"}'] >= 1, 'the reconnect sent Last-Event-ID');
      t.diagnostic(`${got.ns.length} ticks n ${got.ns[0]}..${got.ns[got.ns.length - 1]}; ${got.seen.join(', ')}`);
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
      app.close();
    }
  });

  test('a cookie token expires mid-stream; the page refreshes it and resumes without loss', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await startGateway({
      KSG_AUTH: 'jwt',
      KSG_AUTH_JWT_SECRET: SECRET,
      KSG_AUTH_COOKIE: 'ksg_token',
      KSG_AUTH_EXPIRY_NOTICE_SECS: '2',
      KSG_RETRY_MS: '300',
    });
    let page;
    try {
      // The first token lives 5 s: the notice comes at 3 s, the end at 5 s.
      await browser.context.addCookies([{ name: 'ksg_token', value: token(5), url: gw.url }]);
      page = await browser.context.newPage();
      await page.addInitScript(FOLLOW_ACROSS_EXPIRY);
      // Any page of the gateway's origin will do; the stream is the page's own.
      await page.goto(`${gw.url}app`, { timeout: EVENTS_TIMEOUT_MS });
      // The application's refresh endpoint, as the page would call it.
      await page.exposeFunction('freshToken', () => token(300));
      const got = await within(
        EVENTS_TIMEOUT_MS + 10_000,
        'events across the token expiry',
        page.evaluate(
          () =>
            window.followAcrossExpiry(new EventSource('/stock-prices/GOOG'), async () => {
              const fresh = await window.freshToken();
              document.cookie = `ksg_token=${fresh}; path=/; secure; samesite=strict`;
            }),
        ),
      );
      const m = await assertResumedAcrossExpiry(got, gw);
      assert.equal(m['ksg_auth_refused_total{reason="expired"}'], 0, 'the reconnect carried the fresh cookie');
      t.diagnostic(`${got.ns.length} ticks n ${got.ns[0]}..${got.ns[got.ns.length - 1]}; ${got.seen.join(', ')}`);
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await browser.context.clearCookies();
      await stopGateway(gw);
    }
  });
});
