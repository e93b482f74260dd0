// The views a page asks for, in real headless Chromium's own EventSource and fetch against the
// demo gateway: a value filter (`where=`), a stream of several keys in the envelope format, and
// the gap-free "render, then subscribe": a snapshot read as one JSON document, then a stream
// opened with its id that continues each symbol exactly after the document's record.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TEST_TIMEOUT_MS,
  useBrowser,
  startGateway,
  stopGateway,
  within,
} from './support.mjs';

describe('views in the browser', () => {
  const browser = useBrowser();

  test('filters, several keys, the envelope, and a snapshot document handed over to a stream', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await startGateway();
    let page;
    try {
      page = await browser.context.newPage();
      await within(10_000, 'the starter page', page.goto(gw.url));
      const got = await within(30_000, 'the views', page.evaluate(async () => {
        /** The first `n` messages of `url` (their data, parsed, and ids), then closes it. */
        const take = (url, n) => new Promise((resolve, reject) => {
          const source = new EventSource(url);
          const out = [];
          source.onmessage = (e) => {
            out.push({ data: JSON.parse(e.data), id: e.lastEventId });
            if (out.length === n) {
              source.close();
              resolve(out);
            }
          };
          source.onerror = () => {
            if (source.readyState === 2) reject(new Error(`${url} closed for good`));
          };
        });
        const gold = '/stock-prices?where=' + encodeURIComponent('/symbol="GOOG"') +
          '&where=' + encodeURIComponent('/price>0');
        const filtered = await take(gold, 5);
        const keys = await take('/stock-prices?key=AAPL&key=MSFT&format=envelope', 6);
        // Render, then subscribe from the document's id.
        const response = await fetch('/stock-prices?from=snapshot&format=json');
        const doc = await response.json();
        const rendered = Object.fromEntries(doc.records.map((r) => [r.key, JSON.parse(r.value).n]));
        const next = await new Promise((resolve, reject) => {
          const source = new EventSource('/stock-prices?lastEventId=' + encodeURIComponent(doc.id));
          const first = {};
          const want = new Set(Object.keys(rendered));
          source.onmessage = (e) => {
            const { symbol, n } = JSON.parse(e.data);
            if (!(symbol in first)) first[symbol] = n;
            if ([...want].every((s) => s in first)) {
              source.close();
              resolve(first);
            }
          };
          // A symbol delisted meanwhile has no next tick to check.
          source.addEventListener('delete', (e) => want.delete(e.data));
          source.onerror = () => {
            if (source.readyState === 2) reject(new Error('the stream closed for good'));
          };
        });
        return { filtered, keys, status: response.status, type: response.headers.get('content-type'), rendered, next };
      }));
      assert.ok(got.filtered.every((m) => m.data.symbol === 'GOOG' && m.data.price > 0), JSON.stringify(got.filtered));
      const ns = got.filtered.map((m) => m.data.n);
      assert.ok(ns.every((n, i) => i === 0 || n === ns[i - 1] + 1), `GOOG's ticks in a row: ${ns}`);
      assert.ok(got.filtered.every((m) => m.id !== ''), 'each event has an id');
      for (const m of got.keys) {
        assert.equal(m.data.topic, 'stock-prices');
        assert.ok(['AAPL', 'MSFT'].includes(m.data.key), JSON.stringify(m.data));
        assert.equal(JSON.parse(m.data.value).symbol, m.data.key);
        assert.ok(Number.isInteger(m.data.partition) && Number.isInteger(m.data.offset));
      }
      assert.equal(got.status, 200);
      assert.equal(got.type, 'application/json');
      assert.ok(Object.keys(got.rendered).length >= 5, `most symbols rendered: ${JSON.stringify(got.rendered)}`);
      for (const [symbol, n] of Object.entries(got.next)) {
        assert.equal(n, got.rendered[symbol] + 1, `${symbol} continues right after the document`);
      }
      t.diagnostic(`rendered ${JSON.stringify(got.rendered)}, then ${JSON.stringify(got.next)}`);
    } catch (e) {
      e.message += `\n--- gateway log ---\n${gw.log}`;
      throw e;
    } finally {
      if (page) await within(5_000, 'closing tab', page.close()).catch(() => {});
      await stopGateway(gw);
    }
  });
});
