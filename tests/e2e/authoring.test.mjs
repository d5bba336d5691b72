// Plugins from a team's own repository, in Rust and in Python: scaffolded with `plugin new`
// into a temporary directory outside this repository, built with the command their README
// gives, unit-tested natively, checked with `plugin check`, loaded into a gateway and served to
// the official socket.io-client; and the Python `fx` domain end to end, replaced under live
// traffic. Python components are built with componentize-py (pinned, in target/pyenv).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { deploy, eventually, gatewayBin, nextEvent, request, root, sleep, startGateway, wasmDir } from "./harness.mjs";

const work = mkdtempSync(join(tmpdir(), "flux-authoring-"));
const componentizePy = join(root, "target/pyenv/bin/componentize-py");
// The scaffolded Rust projects build into this repository's target directory: the SDK's
// dependencies (serde, wit-bindgen), already built for the domain plugins, are reused.
const scaffoldTarget = join(root, "target");

function run(command, args, { cwd, env = {}, timeout = 600_000 } = {}) {
  return new Promise((done, failed) => {
    execFile(command, args, { cwd, env: { ...process.env, ...env }, timeout, maxBuffer: 64 << 20 }, (error, stdout, stderr) =>
      error ? failed(new Error(`${command} ${args.join(" ")} failed: ${stderr || error.message}`)) : done({ stdout, stderr }),
    );
  });
}

/** Runs `flux-gateway ARGS`; resolves with the exit code and output. */
function gatewayCli(...args) {
  return new Promise((done) =>
    execFile(gatewayBin, args, { timeout: 300_000, maxBuffer: 64 << 20 }, (error, stdout, stderr) =>
      done({ code: error ? (error.code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

/** Builds a Python plugin project the way its README says. */
async function buildPython(dir, output) {
  await run(componentizePy, ["-d", "wit", "-w", "plugin", "componentize", "app", "-o", output], { cwd: dir });
}

// The shipped Python domain, built into its own plugin directory.
const fx = { plugins: join(work, "fx-plugins") };
before(() => run("bash", [join(root, "scripts/build-python-plugins.sh"), fx.plugins]));
after(async () => {
  await fx.gateway?.stop();
  rmSync(work, { recursive: true, force: true });
});

let rustWasm;

test("a Rust plugin scaffolded outside the repository builds, passes its own test, and serves a client", async (t) => {
  const dir = join(work, "quotes");
  const created = await gatewayCli("plugin", "new", "quotes", "--lang", "rust", dir);
  assert.equal(created.code, 0, created.stderr);
  const readme = readFileSync(join(dir, "README.md"), "utf8");
  assert.match(readme, /cargo build --release --target wasm32-wasip2/);
  const env = { CARGO_TARGET_DIR: scaffoldTarget };
  await run("cargo", ["build", "--quiet", "--release", "--target", "wasm32-wasip2"], { cwd: dir, env });
  const tested = await run("cargo", ["test", "--quiet"], { cwd: dir, env });
  assert.match(tested.stdout, /test result: ok\. 1 passed/);
  rustWasm = join(scaffoldTarget, "wasm32-wasip2/release/flux_quotes.wasm");

  const plugins = join(work, "rust-plugins");
  mkdirSync(plugins);
  copyFileSync(rustWasm, join(plugins, "flux_quotes.wasm"));
  const gateway = await startGateway("", { plugins });
  t.after(() => gateway.stop());
  const socket = await gateway.open();
  const answer = await request(socket, "quotesRequest");
  assert.deepEqual(answer, { status: "loading", message: "No data yet" });
});

test("plugin check prints a plugin's actions for sample inputs, and names both versions of an incompatible WIT", async () => {
  assert.ok(rustWasm, "the Rust scaffold was built");
  const samples = join(work, "samples.ndjson");
  writeFileSync(
    samples,
    [
      { request: "quotesRequest", payload: null },
      { topic: "quotes.service.event.updated", key: "q", payload: { price: 101.5 } },
      { request: "quotesRequest", payload: null },
      { topic: "quotes.service.event.updated", payload: "not json" },
    ]
      .map((line) => JSON.stringify(line))
      .join("\n"),
  );
  const checked = await gatewayCli("plugin", "check", rustWasm, "--records", samples);
  assert.equal(checked.code, 0, checked.stderr);
  const [plugin, ...outputs] = checked.stdout.trim().split("\n").map((line) => JSON.parse(line).output ?? JSON.parse(line));
  assert.equal(plugin.plugin, "quotes");
  assert.deepEqual(plugin.consumes, ["quotes.service.event.updated"]);
  assert.deepEqual(outputs[0].actions, [
    { reply: { event: "quotesUpdate", payload: { status: "loading", message: "No data yet" } } },
    { join: "quotes.global" },
  ]);
  const snapshot = { status: "success", data: { price: 101.5 } };
  assert.deepEqual(outputs[1].actions, [
    { cache_put: { key: "quotes.latest", payload: snapshot, hydrate: { room: "quotes.global", event: "quotesUpdate" } } },
    { emit: { room: "quotes.global", event: "quotesUpdate", payload: snapshot } },
  ]);
  assert.deepEqual(outputs[2].actions, [{ reply: { event: "quotesUpdate", payload: snapshot } }], "the cache is applied between inputs");
  assert.match(outputs[3].record_error, /invalid payload/);

  const incompatible = await gatewayCli("plugin", "check", join(wasmDir, "flux_fixture_wrong_major.wasm"));
  assert.notEqual(incompatible.code, 0);
  assert.match(incompatible.stderr, /built against flux:gateway@1\.0\.0, but this host implements flux:gateway@0\.1\.1/);
});

test("a Python plugin scaffolded outside the repository builds, passes its own test, and serves a client", async (t) => {
  const dir = join(work, "rates");
  const created = await gatewayCli("plugin", "new", "rates", "--lang", "python", dir);
  assert.equal(created.code, 0, created.stderr);
  assert.match(readFileSync(join(dir, "README.md"), "utf8"), /componentize-py -d wit -w plugin componentize app -o rates\.wasm/);
  const tested = await run("python3", ["-m", "unittest"], { cwd: dir });
  assert.match(tested.stderr, /Ran 1 test.*\n\nOK/s);
  await buildPython(dir, "rates.wasm");

  const plugins = join(work, "python-plugins");
  mkdirSync(plugins);
  copyFileSync(join(dir, "rates.wasm"), join(plugins, "rates.wasm"));
  // An ~18 MB component: its first compilation takes a while on a debug build.
  const gateway = await startGateway("", { plugins, waitReady: false });
  t.after(() => gateway.stop());
  await gateway.untilReady(180_000);
  const socket = await gateway.open();
  assert.deepEqual(await request(socket, "ratesRequest"), { status: "loading", message: "No data yet" });
});

test("the Python fx domain answers its request and relays the FX service's records to its room", async () => {
  const gateway = await startGateway("[demo]\nenabled = true\nticker_every_ms = 50\nsnapshot_every_ms = 60000\n", {
    plugins: fx.plugins,
    waitReady: false,
  });
  fx.gateway = gateway; // the next test replaces the plugin under it; stopped after both
  await gateway.untilReady(180_000);
  const socket = await gateway.open();
  const answer = await request(socket, "fxRatesRequest");
  assert.ok(["loading", "success"].includes(answer.status), JSON.stringify(answer));
  // The reply comes as `fxRatesUpdate` too (loading until the first rates are in).
  const update = await nextEvent(socket, "fxRatesUpdate", { timeout: 10_000, accept: (p) => p.status === "success" });
  assert.equal(update.data.base, "USD");
  assert.deepEqual(update.data.quotes.map((q) => q.currency), ["EUR", "GBP", "INR", "JPY"]);
  assert.ok(update.data.quotes.every((q) => typeof q.rate === "number" && typeof q.change === "number"));
  // A socket that joins later is hydrated from the cache at once.
  const late = await gateway.open();
  const hydrated = await request(late, "fxRatesRequest");
  assert.equal(hydrated.status, "success");
});

test("replacing the Python plugin under live traffic loses nothing and drops no connection", async () => {
  const gateway = fx.gateway;
  assert.ok(gateway, "the fx gateway is running");
  const clients = await Promise.all([gateway.open(), gateway.open()]);
  let disconnects = 0;
  // The room's stream, from after each client's answer (which may repeat the update it read
  // from the cache just before that update's broadcast).
  const streams = [];
  for (const client of clients) {
    client.on("disconnect", () => disconnects++);
    const answer = await request(client, "fxRatesRequest");
    streams.push({ client, from: client.received.length, after: answer.data?.seq ?? -1 });
  }
  await Promise.all(clients.map((c) => nextEvent(c, "fxRatesUpdate")));

  // Version 1.0.1: the same mapping, rebuilt from a copy of the sources.
  const copy = join(work, "fx-next");
  mkdirSync(copy);
  const source = readFileSync(join(root, "plugins/python/fx/app.py"), "utf8");
  writeFileSync(join(copy, "app.py"), source.replace('Describe("fx", "1.0.0")', 'Describe("fx", "1.0.1")'));
  await run(componentizePy, ["-d", join(root, "wit"), "-w", "plugin", "componentize", "app", "-p", copy, "-p", join(root, "plugins/python"), "-o", join(copy, "fx.wasm")]);
  deploy(join(fx.plugins, "flux_fx.wasm"), readFileSync(join(copy, "fx.wasm")));
  const admin = async () => (await (await gateway.admin("/admin/plugins")).json()).plugins.find((p) => p.name === "fx");
  await eventually(async () => (await admin())?.version === "1.0.1", { timeout: 120_000, what: "fx 1.0.1 to go live" });
  const since = clients.map((c) => c.received.length);
  await Promise.all(clients.map((c, i) => nextEvent(c, "fxRatesUpdate", { since: since[i] })));
  await sleep(300);
  assert.equal(disconnects, 0);
  for (const { client, from, after } of streams) {
    const seqs = client.received
      .slice(from)
      .filter((e) => e.event === "fxRatesUpdate")
      .map((e) => e.args[0].data.seq)
      .filter((seq) => seq > after);
    assert.ok(seqs.length > 20, `a steady stream: ${seqs.length} updates`);
    for (let i = 1; i < seqs.length; i++) {
      assert.equal(seqs[i], seqs[i - 1] + 1, `update ${seqs[i - 1]} then ${seqs[i]}: none lost, none repeated`);
    }
  }
});
