// The demo page (host/static/index.html) in a real browser: Debian's headless Chromium, driven
// with playwright-core, against a gateway with the simulated services. The page connects with
// socket.io-client's default options (polling first, then the upgrade to websocket), from
// another origin that the gateway allows, from one it refuses, and from the gateway itself.
// Plus the CORS answers themselves, checked with plain fetch.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium } from "playwright-core";
import { FAST_DEMO, connect, connectError, eventually, gatewayBin, pluginDir, relayVersion, root, startGateway, withTimeout } from "./harness.mjs";
import { UUID } from "./shapes.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const STATIC = join(root, "host/static");
const ARTIFACTS = join(root, "target/e2e-artifacts");
const REQUESTS = ["cryptoTopMoversRequest", "cryptoTopCoinsRequest", "topNewsRequest", "stockTopPerformersRequest"];
const WAIT = 15_000;

/** A plain HTTP server on a free loopback port serving the demo page and the client build. */
async function startPageServer() {
  const files = {
    "/": ["index.html", "text/html; charset=utf-8"],
    "/index.html": ["index.html", "text/html; charset=utf-8"],
    "/socket.io.min.js": ["socket.io.min.js", "text/javascript; charset=utf-8"],
  };
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, "http://page").pathname];
    if (!file || req.method !== "GET") {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
    res.end(readFileSync(join(STATIC, file[0])));
  });
  await new Promise((listening) => server.listen(0, "127.0.0.1", listening));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    stop: () => new Promise((closed) => server.close(closed)),
  };
}

/** A new page that records its console, its errors and its Socket.IO traffic. */
async function openPage(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const journal = { console: [], http: [], websockets: [] };
  page.on("console", (m) => journal.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => journal.console.push(`pageerror: ${e.message}`));
  page.on("response", (r) => {
    if (r.url().includes("/socket.io/")) journal.http.push({ method: r.request().method(), url: r.url(), status: r.status(), headers: r.headers() });
  });
  page.on("requestfailed", (r) => {
    if (r.url().includes("/socket.io/")) journal.http.push({ method: r.method(), url: r.url(), failed: r.failure()?.errorText });
  });
  page.on("websocket", (ws) => journal.websockets.push(ws.url()));
  await page.goto(url, { timeout: WAIT, waitUntil: "load" });
  return { page, journal, close: () => context.close() };
}

/** What the page shows, for failure messages. */
async function describePage({ page, journal }) {
  const shown = await page
    .evaluate(() => {
      const text = (id) => document.getElementById(id)?.textContent?.trim();
      const states = [...document.querySelectorAll(".state")].map((n) => `${n.id}=${n.dataset.state}`);
      return {
        status: text("status"),
        transport: text("transport-history"),
        user: text("user-id"),
        weather: `${document.getElementById("weather")?.dataset.cityKey} ${text("weather-temp")}`,
        seq: text("ticker-seq"),
        states,
        errors: text("errors"),
      };
    })
    .catch((e) => `(page unreadable: ${e.message})`);
  return JSON.stringify({ shown, console: journal.console.slice(-20), http: journal.http.slice(-10), websockets: journal.websockets }, null, 1);
}

/** Waits until `check(arg)` is truthy in the page; a timeout fails with what the page shows. */
async function until(handle, what, check, arg, timeout = WAIT) {
  try {
    return await (await handle.page.waitForFunction(check, arg, { timeout, polling: 50 })).jsonValue();
  } catch (error) {
    throw new Error(`timed out after ${timeout} ms waiting for ${what}: ${error.message.split("\n")[0]}\n${await describePage(handle)}`);
  }
}

const text = (handle, id) => handle.page.evaluate((id) => document.getElementById(id).textContent.trim(), id);

/** The live values every connected page must show: user id, weather, a moving ticker, the four answers. */
async function assertLive(handle) {
  await until(handle, "a user id", () => document.getElementById("user-id").textContent.trim() !== "");
  assert.match(await text(handle, "user-id"), UUID);

  await until(handle, "Delhi's weather", () => {
    const card = document.getElementById("weather");
    return card.dataset.cityKey === "delhi" && card.dataset.observedAt !== "" && document.getElementById("weather-temp").textContent !== "—";
  });
  assert.ok(Number.isFinite(Number((await text(handle, "weather-temp")).replace(/,/g, ""))), "a temperature");
  assert.match(await text(handle, "weather-humidity"), /^\d+$/);
  assert.match(await text(handle, "weather-wind"), /^\d+(\.\d+)?$/);
  assert.notEqual(await text(handle, "weather-condition"), "—");
  assert.notEqual(await text(handle, "weather-observed"), "—");
  assert.equal(await text(handle, "location-state"), "success");

  const first = Number(await until(handle, "a ticker tick", () => document.getElementById("ticker-seq").textContent.match(/^\d+$/)?.[0]));
  await until(handle, "the ticker to advance", (first) => Number(document.getElementById("ticker-seq").textContent) > first, first);
  assert.ok(Number(await text(handle, "ticker-count")) >= 2, "at least two ticks counted");
  assert.notEqual(await text(handle, "ticker-price"), "—");

  for (const request of REQUESTS) {
    await until(handle, `${request} to succeed`, (id) => document.getElementById(id).dataset.state === "success", `state-${request}`);
    assert.equal(await text(handle, `state-${request}`), "success");
  }
  await until(handle, "every snapshot rendered", () =>
    document.querySelectorAll("#top-gainers li:not(.empty)").length > 0 &&
    document.querySelectorAll("#top-losers li:not(.empty)").length > 0 &&
    document.querySelectorAll("#top-coins tr td:not(.empty)").length > 0 &&
    document.querySelectorAll("#news-list li:not(.empty)").length > 0 &&
    document.querySelectorAll("#stock-performers tr td:not(.empty)").length > 0,
  );
  assert.equal(await text(handle, "error-count"), "0", `no error event: ${await text(handle, "errors")}`);
}

describe("the demo page in headless Chromium", () => {
  let gateway, allowed, foreign, browser;

  before(async () => {
    allowed = await startPageServer();
    foreign = await startPageServer();
    gateway = await startGateway(
      "[demo]\nenabled = true\nticker_every_ms = 100\nsnapshot_every_ms = 500\nanswer_after_ms = 20\n" +
        `[socket]\nallowed_origins = [${JSON.stringify(allowed.origin)}]\n`,
    );
    browser = await withTimeout(chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true }), 30_000, "Chromium to start");
  });

  after(async () => {
    await browser?.close();
    await gateway?.stop();
    await allowed?.stop();
    await foreign?.stop();
  });

  test("from an allowed origin: polling, upgraded to websocket, live values and the four answers", { timeout: 90_000 }, async () => {
    const handle = await openPage(browser, `${allowed.origin}/?gateway=${encodeURIComponent(gateway.url)}`);
    try {
      await until(handle, "the page to connect", () => document.getElementById("status").dataset.state === "connected");
      await until(handle, "the upgrade to websocket", () =>
        window.flux.socket.io.engine.transport.name === "websocket" && document.getElementById("transport").textContent === "websocket",
      );
      assert.equal(await text(handle, "transport-history"), "polling → websocket", "started on polling, then upgraded");
      const polls = handle.journal.http.filter((r) => r.url.includes("transport=polling") && r.status);
      assert.ok(polls.length > 0, "the handshake went over HTTP long-polling");
      for (const poll of polls) {
        assert.equal(poll.status, 200, `${poll.method} ${poll.url}`);
        assert.equal(poll.headers["access-control-allow-origin"], allowed.origin, `${poll.method} ${poll.url} names the page's origin`);
      }
      assert.ok(handle.journal.websockets.some((u) => /transport=websocket/.test(u) && /sid=/.test(u)), `upgraded the polling session: ${handle.journal.websockets}`);

      await assertLive(handle);

      // Another city: the page listens to its room's event, and São Paulo's key keeps its ã.
      const since = await text(handle, "ticker-seq");
      await handle.page.selectOption("#city", "São Paulo");
      await until(handle, "São Paulo's weather", () => {
        const card = document.getElementById("weather");
        return card.dataset.cityKey === "são-paulo" && card.dataset.observedAt !== "";
      });
      assert.equal(await text(handle, "weather-event"), "weather.são-paulo.update");
      assert.match(await text(handle, "weather-city"), /^São Paulo/);
      await until(handle, "the ticker to go on", (since) => Number(document.getElementById("ticker-seq").textContent) > Number(since), since);

      // A button asks again: loading, then success.
      await handle.page.click("#request-topNewsRequest");
      await until(handle, "topNewsRequest to succeed again", () => document.getElementById("state-topNewsRequest").dataset.state === "success");
      assert.equal(await handle.page.evaluate(() => window.flux.socket.connected), true);
      assert.equal(await text(handle, "transport"), "websocket");
    } finally {
      await handle.close();
    }
  });

  test("from an origin outside the allowlist the browser is refused", { timeout: 60_000 }, async () => {
    const handle = await openPage(browser, `${foreign.origin}/?gateway=${encodeURIComponent(gateway.url)}`);
    try {
      await until(handle, "a connect error", () => document.getElementById("status").dataset.state === "error", undefined, 10_000);
      assert.match(await text(handle, "status"), /connect error/);
      // Give it a few seconds (and a retry or two): never connected, no user id.
      await new Promise((done) => setTimeout(done, 3_000));
      const seen = await handle.page.evaluate(() => ({
        ever: window.flux.state.everConnected,
        connected: window.flux.socket.connected,
        user: document.getElementById("user-id").textContent,
        status: document.getElementById("status").dataset.state,
      }));
      assert.deepEqual(seen, { ever: false, connected: false, user: "", status: "error" }, await describePage(handle));
      for (const poll of handle.journal.http.filter((r) => r.status)) {
        assert.notEqual(poll.headers["access-control-allow-origin"], foreign.origin, `${poll.url} must not name a foreign origin`);
      }
    } finally {
      await handle.close();
    }
  });

  test("the page served by the gateway itself renders live values", { timeout: 90_000 }, async () => {
    const handle = await openPage(browser, `${gateway.url}/`);
    try {
      await until(handle, "the page to connect", () => document.getElementById("status").dataset.state === "connected");
      assert.equal(await text(handle, "gateway"), gateway.url);
      await until(handle, "the upgrade to websocket", () => window.flux.socket.io.engine.transport.name === "websocket");
      await assertLive(handle);
      // Let a few snapshots and ticks land, then keep a picture of it.
      await until(handle, "a snapshot pushed after the first", () => Number(document.getElementById("coins").dataset.received) >= 2);
      await until(handle, "every coin ticked", () => document.querySelectorAll("#ticker-table tr").length >= 6);
      mkdirSync(ARTIFACTS, { recursive: true });
      await handle.page.screenshot({ path: join(ARTIFACTS, "demo.png"), fullPage: true, timeout: WAIT });
    } finally {
      await handle.close();
    }
  });

  test("the gateway serves the page and the client build as they are in host/static", { timeout: 20_000 }, async () => {
    for (const [path, file, type] of [
      ["/", "index.html", /^text\/html/],
      ["/socket.io.min.js", "socket.io.min.js", /javascript/],
    ]) {
      const response = await fetch(`${gateway.url}${path}`, { signal: AbortSignal.timeout(5_000) });
      assert.equal(response.status, 200, path);
      assert.match(response.headers.get("content-type") ?? "", type, path);
      const [served, shipped] = [await response.text(), readFileSync(join(STATIC, file), "utf8")];
      assert.ok(served === shipped, `${path} serves ${served.length} characters, host/static/${file} has ${shipped.length}: the same file, embedded at build time (rebuild after editing it)`);
    }
  });

  test("CORS: preflight and polling handshake name an allowed origin; a foreign origin gets 403", { timeout: 30_000 }, async () => {
    const polling = `${gateway.url}/socket.io/?EIO=4&transport=polling`;
    const call = (method, headers) => fetch(polling, { method, headers, signal: AbortSignal.timeout(5_000) });

    const preflight = await call("OPTIONS", { Origin: allowed.origin, "Access-Control-Request-Method": "POST" });
    assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight answered ${preflight.status}`);
    assert.equal(preflight.headers.get("access-control-allow-origin"), allowed.origin);

    const foreignPreflight = await call("OPTIONS", { Origin: foreign.origin, "Access-Control-Request-Method": "POST" });
    assert.notEqual(foreignPreflight.headers.get("access-control-allow-origin"), foreign.origin, "a foreign preflight is not allowed");
    assert.notEqual(foreignPreflight.headers.get("access-control-allow-origin"), "*");

    const handshake = await call("GET", { Origin: allowed.origin });
    const body = await handshake.text();
    assert.equal(handshake.status, 200, body);
    assert.equal(handshake.headers.get("access-control-allow-origin"), allowed.origin);
    assert.match(body, /^0\{.*"sid"/, "an Engine.IO open packet");

    const refused = await call("GET", { Origin: foreign.origin });
    await refused.arrayBuffer();
    assert.equal(refused.status, 403);
    assert.notEqual(refused.headers.get("access-control-allow-origin"), foreign.origin);

    const noOrigin = await call("GET", {});
    await noOrigin.arrayBuffer();
    assert.equal(noOrigin.status, 200, "a request without Origin (not a browser) passes");
  });

  test("websocket: an allowed Origin connects, a foreign one is refused", { timeout: 30_000 }, async () => {
    const socket = await connect(gateway.url, { extraHeaders: { Origin: allowed.origin } });
    socket.close();
    const message = await connectError(gateway.url, { extraHeaders: { Origin: foreign.origin } });
    assert.match(message, /websocket error/);
  });
});

describe("a gateway that requires tokens, in headless Chromium", () => {
  const SECRET = "browser-test-secret";
  let gateway, pages, browser;
  /** A token from the gateway's own development helper (`flux-gateway token`). */
  const mint = (...args) =>
    execFileSync(gatewayBin, ["token", ...args], { env: { ...process.env, FLUX_AUTH_HS256_SECRET: SECRET }, encoding: "utf8" }).trim();
  const pageFor = (token) => `${pages.origin}/?gateway=${encodeURIComponent(gateway.url)}&token=${encodeURIComponent(token)}`;

  before(async () => {
    pages = await startPageServer();
    gateway = await startGateway(
      "[demo]\nenabled = true\nticker_every_ms = 100\nsnapshot_every_ms = 500\nanswer_after_ms = 20\n" +
        `[socket]\nallowed_origins = [${JSON.stringify(pages.origin)}]\n` +
        `[auth]\nmode = "jwt"\nhs256_secret = "${SECRET}"\nleeway_secs = 0\n[plugins.stocks]\nrequired_scope = "stocks"\n`,
    );
    browser = await withTimeout(chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true }), 30_000, "Chromium to start");
  });

  after(async () => {
    await browser?.close();
    await gateway?.stop();
    await pages?.stop();
  });

  test("a token with the stocks scope: the page is the token's user and gets every answer", { timeout: 60_000 }, async () => {
    const handle = await openPage(browser, pageFor(mint("--sub", "alice", "--scope", "stocks")));
    try {
      await until(handle, "alice as the user", () => document.getElementById("user-id").textContent.trim() === "alice");
      await until(handle, "the upgrade to websocket", () => window.flux.socket.io.engine.transport.name === "websocket");
      await until(handle, "Delhi's weather", () => document.getElementById("weather").dataset.cityKey === "delhi");
      for (const request of REQUESTS) {
        await until(handle, `${request} to succeed`, (id) => document.getElementById(id).dataset.state === "success", `state-${request}`);
      }
    } finally {
      await handle.close();
    }
  });

  test("a token without the scope: the stock request is refused, the rest is served", { timeout: 60_000 }, async () => {
    const handle = await openPage(browser, pageFor(mint("--sub", "bob")));
    try {
      await until(handle, "bob as the user", () => document.getElementById("user-id").textContent.trim() === "bob");
      await until(handle, "the stock request to be refused", () => document.getElementById("state-stockTopPerformersRequest").dataset.state === "error");
      for (const request of REQUESTS.filter((r) => r !== "stockTopPerformersRequest")) {
        await until(handle, `${request} to succeed`, (id) => document.getElementById(id).dataset.state === "success", `state-${request}`);
      }
      assert.match(await text(handle, "errors"), /requires the "stocks" scope/);
      assert.equal(
        await handle.page.evaluate(() => document.querySelectorAll("#stock-performers tr td:not(.empty)").length),
        0,
        "no stock snapshot reached the page",
      );
    } finally {
      await handle.close();
    }
  });

  test("a bad token is refused with its reason, and the page never connects", { timeout: 60_000 }, async () => {
    const expired = mint("--sub", "carol", "--ttl-secs", "0");
    await new Promise((done) => setTimeout(done, 1_100)); // exp is in whole seconds
    for (const [token, reason] of [
      ["not-a-token", "malformed token"],
      [expired, "token expired"],
    ]) {
      const handle = await openPage(browser, pageFor(token));
      try {
        await until(handle, `the refusal (${reason})`, () => document.getElementById("status").dataset.state === "error");
        assert.match(await text(handle, "status"), new RegExp(`connect error: ${reason}`));
        assert.equal(await text(handle, "user-id"), "");
      } finally {
        await handle.close();
      }
    }
  });
});

describe("the demo page next to a plugin whose circuit is open", () => {
  let gateway, browser, dir;

  before(async () => {
    // The four domains, and a relay version that spins on every record, loaded first (before
    // any record, so no canary catches it): its circuit opens within seconds.
    dir = mkdtempSync(join(tmpdir(), "flux-browser-circuit-"));
    for (const domain of ["weather", "crypto", "news", "stocks"]) copyFileSync(join(pluginDir, `flux_${domain}.wasm`), join(dir, `flux_${domain}.wasm`));
    writeFileSync(join(dir, "0-relay.wasm"), relayVersion("loop0001", 1));
    gateway = await startGateway(FAST_DEMO.replace("snapshot_every_ms = 60000", "snapshot_every_ms = 500"), { plugins: dir });
    await eventually(async () => (await (await gateway.admin("/admin/plugins")).json()).plugins.some((p) => p.name === "relay" && p.circuit === "open"), {
      what: "the looping plugin's circuit to open",
    });
    browser = await withTimeout(chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true }), 30_000, "Chromium to start");
  });

  after(async () => {
    await browser?.close();
    await gateway?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the page is served in full, and a request to the broken plugin is refused in words at once", { timeout: 90_000 }, async () => {
    const handle = await openPage(browser, `${gateway.url}/`);
    try {
      await until(handle, "the upgrade to websocket", () => window.flux.socket.io.engine.transport.name === "websocket");
      await assertLive(handle);
      const answer = await handle.page.evaluate(async () => {
        const started = performance.now();
        const reply = await window.flux.socket.timeout(5_000).emitWithAck("relayJoin");
        return { reply, ms: performance.now() - started };
      });
      assert.equal(answer.reply.status, "error");
      assert.match(answer.reply.message, /relay service is temporarily unavailable/);
      await until(handle, "the refusal on the page", () => /relay service is temporarily unavailable/.test(document.getElementById("errors").textContent));
      console.log(`# a request to the open-circuit plugin answered in ${answer.ms.toFixed(0)} ms`);
    } finally {
      await handle.close();
    }
  });
});
