// Transient refusals and ids the log cannot honour, in real headless Chromium. An EventSource
// closes for good on any status but 200, so the gateway answers the refusals a client can
// outwait with `200`, `retry:` and `event: unavailable` (README, "Transient refusals keep pages
// streaming"), and an id the log cannot honour with `event: gap`. Here a page meets a burst over
// the stream-request rate limit (demo gateway); a Kafka outage of 20 s during which the gateway
// is replaced; and a topic deleted and created again while the gateway is replaced (a real
// Apache Kafka broker of this file's own). It keeps streaming through each, with every record
// once.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  EVENTS_TIMEOUT_MS,
  SHUTDOWN_LIMIT_MS,
  here,
  useBrowser,
  metrics,
  pollUntil,
  sleep,
  startGateway,
  stopGateway,
  within,
} from './support.mjs';

const KAFKA_LOCAL = resolve(here, '../../scripts/kafka-local.sh');
// A broker of this file's own, on ports of its own (controller +1, SASL +2), so that the broker
// of the Rust suite (9092) is never touched.
const KAFKA_PORT = 19392;
const KAFKA_DATA = join(tmpdir(), `ksg-browser-kafka-${process.pid}`);
const OUTAGE_MS = 20_000;

/** Runs scripts/kafka-local.sh with `args` (stdin: `input`) against this file's broker. */
function kafkaLocal(args, input) {
  return new Promise((resolveRun, rejectRun) => {
    const child = execFile(
      'bash',
      [KAFKA_LOCAL, ...args],
      {
        // Nothing of the caller's own broker settings (scripts/test.sh exports
        // KAFKA_LOCAL_DATA and KAFKA_LOCAL_EPHEMERAL for its broker): this broker keeps its
        // data across its restarts.
        env: {
          ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KAFKA_LOCAL_'))),
          KAFKA_LOCAL_PORT: String(KAFKA_PORT),
          KAFKA_LOCAL_DATA: KAFKA_DATA,
        },
        timeout: 150_000,
        maxBuffer: 1 << 20,
      },
      (error, stdout, stderr) => {
        if (error) rejectRun(new Error(`kafka-local.sh ${args.join(' ')}: ${error.message}\n${stderr}`));
        else resolveRun(stdout);
      },
    );
    child.stdin.end(input ?? '');
  });
}

/** Produces records `from`..`to` (values are the numbers, keys k0..k4) with the Java client's
 * defaults, as an application producer would. */
function produce(topic, from, to) {
  let lines = '';
  for (let n = from; n <= to; n++) lines += `k${n % 5}\t${n}\n`;
  return kafkaLocal(['produce', topic], lines);
}

/** A TCP port free right now on 127.0.0.1 (both gateways of a test listen on it in turn). */
function freePort() {
  return new Promise((resolvePort, rejectPort) => {
    const server = createServer();
    server.on('error', rejectPort);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** Polls the gateway's /readyz until it answers 200. */
function ready(gw, ms) {
  return pollUntil(ms, 'the gateway ready (Kafka answered)', async () => {
    const res = await fetch(`http://127.0.0.1:${gw.adminPort}/readyz`, { signal: AbortSignal.timeout(2_000) });
    return res.status === 200;
  }, 250);
}

/** Opens `path` as an EventSource in `page` and records what the page sees in `window.seen`:
 * each message's number, every `unavailable` and `gap` event's data, opens, errors, and whether
 * the EventSource ever closed for good. */
function watch(page, path) {
  return page.evaluate((path) => {
    const seen = { ns: [], unavailable: [], gaps: [], opens: 0, errors: 0, closedForGood: false };
    window.seen = seen;
    const source = new EventSource(path);
    window.source = source;
    source.onopen = () => (seen.opens += 1);
    // A number (the outage test's records), or the demo's tick with its number `n`.
    source.onmessage = (e) => {
      const value = JSON.parse(e.data);
      seen.ns.push(typeof value === 'number' ? value : value.n);
    };
    source.addEventListener('unavailable', (e) => seen.unavailable.push(JSON.parse(e.data)));
    source.addEventListener('gap', (e) => seen.gaps.push({ at: seen.ns.length, ...JSON.parse(e.data) }));
    source.onerror = () => {
      seen.errors += 1;
      if (source.readyState === EventSource.CLOSED) seen.closedForGood = true;
    };
  }, path);
}

/** Starts this file's broker (if it is not running), creates `topic` with `partitions` and
 * records 1..`records`, and returns the environment of a gateway serving it on a port of its
 * own (every gateway started with it listens on the same port, so a page reconnects to the
 * next one). */
async function topicOnOwnBroker(topic, partitions, records) {
  await kafkaLocal(['start']);
  await kafkaLocal(['topics', '--create', '--topic', topic, '--partitions', String(partitions)]);
  await produce(topic, 1, records);
  return {
    KSG_KAFKA_BROKERS: `127.0.0.1:${KAFKA_PORT}`,
    KSG_AUTH: 'none',
    KSG_TOPICS: topic,
    KSG_LISTEN: `127.0.0.1:${await freePort()}`,
    KSG_RETRY_MS: '1000',
    KSG_DEMO_TICKS_PER_SEC: null,
  };
}

/** Replaces `gw` (SIGTERM, its exit awaited) by a gateway with `env`, after `meanwhile`. */
async function replaceGateway(gw, env, meanwhile = async () => {}) {
  assert.ok(gw.child.kill('SIGTERM'), 'SIGTERM delivered');
  await within(SHUTDOWN_LIMIT_MS, 'the old gateway exits', gw.exited);
  await stopGateway(gw);
  await meanwhile();
  return startGateway(env);
}

const seenBy = (page) => within(5_000, 'reading window.seen', page.evaluate(() => window.seen));

describe('transient refusals and unhonourable ids in headless Chromium', { timeout: 400_000 }, () => {
  const browser = useBrowser();

  after(async () => {
    await kafkaLocal(['stop']).catch(() => {});
    rmSync(KAFKA_DATA, { recursive: true, force: true });
  }, { timeout: 60_000 });

  test('a stream refused for the request rate comes back by itself and streams', { timeout: 60_000 }, async (t) => {
    // A burst of 4 stream requests per connection, then 1 a second.
    const gw = await startGateway({
      KSG_MAX_STREAMS_PER_CONNECTION: '4',
      KSG_MAX_STREAM_OPENS_PER_SEC: '1',
    });
    let page;
    try {
      page = await browser.context.newPage();
      await page.goto(gw.url, { timeout: EVENTS_TIMEOUT_MS });
      // Opens and closes streams at once until one is refused: the burst is spent.
      const refused = await within(
        EVENTS_TIMEOUT_MS,
        'a refusal for the request rate',
        page.evaluate(async () => {
          for (let attempt = 1; attempt <= 20; attempt++) {
            const source = new EventSource('/stock-prices/GOOG');
            const outcome = await new Promise((done) => {
              source.onmessage = () => done('streaming');
              source.addEventListener('unavailable', (e) => done(JSON.parse(e.data)));
              source.onerror = () => source.readyState === EventSource.CLOSED && done('closed');
            });
            source.close();
            // Refused ('unavailable' data), or closed for good: either ends the attempts.
            if (outcome !== 'streaming') return { attempt, outcome };
          }
          return { attempt: 20, outcome: 'never refused' };
        }),
      );
      assert.equal(refused.outcome.reason, 'rate_limited', JSON.stringify(refused));
      assert.ok(
        refused.outcome.retry_ms >= 1 && refused.outcome.retry_ms <= 1_250,
        `retry within the wait plus a quarter: ${JSON.stringify(refused)}`,
      );
      // A page that opens a stream now is refused, waits, and then streams, on its own.
      await watch(page, '/stock-prices/GOOG');
      await page.waitForFunction(() => window.seen.ns.length >= 5, null, { polling: 100, timeout: EVENTS_TIMEOUT_MS });
      const seen = await seenBy(page);
      assert.equal(seen.closedForGood, false, 'the EventSource never closed for good');
      assert.ok(seen.unavailable.length >= 1, `it was refused first: ${JSON.stringify(seen)}`);
      assert.ok(seen.unavailable.every((u) => u.reason === 'rate_limited'), JSON.stringify(seen.unavailable));
      const consecutive = seen.ns.every((n, i) => i === 0 || n === seen.ns[i - 1] + 1);
      assert.ok(consecutive, `ticks follow each other: ${seen.ns.join(',')}`);
      const m = await metrics(gw);
      assert.ok(m['ksg_streams_refused_total{reason="rate_limited"}'] >= 2, 'refusals are counted');
      t.diagnostic(
        `refused at attempt ${refused.attempt} (retry ${refused.outcome.retry_ms} ms); the page's stream was refused ` +
          `${seen.unavailable.length} time(s), opened ${seen.opens} time(s), then got ${seen.ns.length} ticks`,
      );
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });

  test('a page keeps streaming through a 20-s Kafka outage and a new gateway, with every record once', { timeout: 200_000 }, async (t) => {
    const started = Date.now();
    const env = await topicOnOwnBroker('outage', 3, 20);
    let gw = await startGateway(env);
    let page;
    const phases = [];
    try {
      await ready(gw, 30_000);
      page = await browser.context.newPage();
      // Any page of the gateway's origin: the stream is the page's own.
      await page.goto(`${gw.url}app`, { timeout: EVENTS_TIMEOUT_MS });
      await watch(page, '/outage?from=earliest');
      await page.waitForFunction(() => window.seen.ns.length >= 20, null, { polling: 100, timeout: EVENTS_TIMEOUT_MS });
      phases.push(`20 records in ${Date.now() - started} ms`);

      // Kafka goes away, and the gateway is replaced while it is away (a deploy during an
      // outage): the new one cannot reach Kafka, so every stream request is refused for a while.
      const outage = Date.now();
      await kafkaLocal(['stop']);
      gw = await replaceGateway(gw, env);
      await page.waitForFunction(() => window.seen.unavailable.length >= 2, null, {
        polling: 100,
        timeout: EVENTS_TIMEOUT_MS,
      });
      phases.push(`refused with unavailable ${Date.now() - outage} ms into the outage`);
      await sleep(Math.max(0, OUTAGE_MS - (Date.now() - outage)));
      assert.equal((await seenBy(page)).closedForGood, false, 'the EventSource is still trying');

      await kafkaLocal(['start']);
      phases.push(`Kafka back after ${Date.now() - outage} ms`);
      await ready(gw, 60_000);
      await produce('outage', 21, 40);
      await page.waitForFunction(() => window.seen.ns.length >= 40, null, { polling: 100, timeout: 30_000 });
      phases.push(`40 records ${Date.now() - outage} ms after the outage began`);
      // Anything extra (a record twice) would come with the rest: give it a moment.
      await sleep(1_000);
      const seen = await seenBy(page);
      const sorted = [...seen.ns].sort((a, b) => a - b);
      assert.deepEqual(sorted, Array.from({ length: 40 }, (_, i) => i + 1), `every record once: ${seen.ns.join(',')}`);
      assert.equal(seen.closedForGood, false, 'the EventSource never closed for good');
      // Kafka unavailable on the new gateway; the old one, draining, may have refused a
      // reconnect as shutting down.
      const reasons = seen.unavailable.map((u) => u.reason);
      assert.ok(reasons.includes('kafka_unavailable'), JSON.stringify(seen.unavailable));
      assert.ok(
        reasons.every((r) => r === 'kafka_unavailable' || r === 'shutting_down'),
        JSON.stringify(seen.unavailable),
      );
      assert.ok(
        seen.unavailable.every((u) => u.retry_ms >= 1_000 && u.retry_ms <= 1_250),
        `retry after KSG_RETRY_MS plus up to a quarter: ${JSON.stringify(seen.unavailable)}`,
      );
      const m = await metrics(gw);
      const refusedKey = 'ksg_streams_refused_total{reason="kafka_unavailable"}';
      assert.ok(m[refusedKey] >= seen.unavailable.length - 1, `${refusedKey}: ${m[refusedKey]}`);
      // The stream resumed on the new gateway with the browser's Last-Event-ID (at the live
      // position, from memory, when it came back before the next records; else from Kafka).
      const resumes = m['ksg_resumes_total{source="memory"}'] + m['ksg_resumes_total{source="kafka"}'];
      assert.ok(resumes >= 1, `the new gateway resumed the stream: ${resumes}`);
      t.diagnostic(
        `${phases.join('; ')}; the page: ${seen.opens} opens, ${seen.errors} errors, ` +
          `${seen.unavailable.length} unavailable events; new gateway: ${m[refusedKey]} refused, ` +
          `${resumes} resume(s); ${Date.now() - started} ms in all`,
      );
    } catch (e) {
      e.message += `\n--- phases ---\n${phases.join('\n')}\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });

  test('a topic recreated while the gateway is replaced: the page resumes with a gap, not a dead stream', { timeout: 150_000 }, async (t) => {
    const started = Date.now();
    const env = await topicOnOwnBroker('recreated', 2, 10);
    let gw = await startGateway(env);
    let page;
    try {
      await ready(gw, 30_000);
      page = await browser.context.newPage();
      await page.goto(`${gw.url}app`, { timeout: EVENTS_TIMEOUT_MS });
      await watch(page, '/recreated?from=earliest');
      await page.waitForFunction(() => window.seen.ns.length >= 10, null, { polling: 100, timeout: EVENTS_TIMEOUT_MS });

      // While the gateway is replaced, the topic is deleted and created again with one
      // partition and new records: the page's id belongs to the old incarnation.
      gw = await replaceGateway(gw, env, async () => {
        await kafkaLocal(['topics', '--delete', '--topic', 'recreated']);
        await pollUntil(60_000, 'the topic created again', async () => {
          try {
            await kafkaLocal(['topics', '--create', '--topic', 'recreated', '--partitions', '1']);
            return true;
          } catch {
            return false; // still being deleted
          }
        }, 1_000);
        await produce('recreated', 101, 105);
      });
      await ready(gw, 30_000);
      await page.waitForFunction(() => window.seen.ns.length >= 15, null, { polling: 100, timeout: 30_000 });
      await sleep(1_000);
      const seen = await seenBy(page);
      const old = seen.ns.slice(0, 10).sort((a, b) => a - b);
      assert.deepEqual(old, Array.from({ length: 10 }, (_, i) => i + 1), `the old incarnation: ${seen.ns.join(',')}`);
      assert.deepEqual(seen.ns.slice(10), [101, 102, 103, 104, 105], `then the new one, once: ${seen.ns.join(',')}`);
      assert.equal(seen.closedForGood, false, 'the EventSource never closed for good');
      assert.equal(seen.gaps.length, 1, JSON.stringify(seen.gaps));
      const gap = seen.gaps[0];
      assert.equal(gap.at, 10, 'the gap comes between the incarnations');
      assert.match(gap.reason, /^the resume id is ahead of the log/);
      const byPartition = Object.fromEntries(gap.partitions.map((p) => [p.partition, p]));
      assert.equal(byPartition[0]?.to, 0, `partition 0 from its start: ${JSON.stringify(gap)}`);
      assert.equal(byPartition[1]?.to, null, `partition 1 is gone: ${JSON.stringify(gap)}`);
      const m = await metrics(gw);
      assert.equal(m['ksg_gaps_total{topic="recreated"}'], 1);
      assert.equal(m['ksg_streams_refused_total{reason="bad_resume_id"}'], 0);
      t.diagnostic(`gap ${JSON.stringify(gap)}; ${seen.opens} opens; ${Date.now() - started} ms`);
    } catch (e) {
      const seen = page ? await seenBy(page).catch(() => null) : null;
      throw new Error(`${e.message}\n--- page ---\n${JSON.stringify(seen)}\n--- gateway log ---\n${gw.log}`);
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });
});
