// Payload shapes of the client contract (shared/flux-socket-events.md), shared by the suites.

import assert from "node:assert/strict";

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
export const SNAPSHOT_EVENTS = ["cryptoTopMoversResponse", "cryptoTopCoinsResponse", "newsUpdate", "stockTopPerformersResponse"];

export function assertSuccess(payload, check = () => {}) {
  assert.equal(payload.status, "success", JSON.stringify(payload));
  check(payload.data);
}

export function assertErrorShape(payload) {
  assert.deepEqual(Object.keys(payload).sort(), ["message", "status"]);
  assert.equal(payload.status, "error");
  assert.ok(payload.message.length > 0);
  assert.doesNotMatch(payload.message, /line \d+ column|wasm|panicked|backtrace/i, "no internals leak");
}

export const shapes = {
  cryptoTopMoversResponse: (p) =>
    assertSuccess(p, (d) => {
      assert.ok(Array.isArray(d.topGainers) && d.topGainers.length > 0);
      assert.ok(Array.isArray(d.topLosers) && d.topLosers.length > 0);
    }),
  cryptoTopCoinsResponse: (p) => assertSuccess(p, (d) => assert.ok(Array.isArray(d.topCoins) && d.topCoins.length > 0)),
  newsUpdate: (p) => {
    assertSuccess(p, (d) => assert.ok(Array.isArray(d) && d.length > 0 && d[0].title));
    assert.equal(p.scope, "global");
  },
  stockTopPerformersResponse: (p) => assertSuccess(p, (d) => assert.ok(Array.isArray(d) && d.length > 0 && d[0].symbol)),
};
