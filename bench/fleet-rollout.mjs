// Publish to live on a fleet: three gateway nodes (release build) on one tansu broker, a client
// in `relay.room` on each; each round publishes a new relay version with `flux-gateway plugin
// publish` (signed) and measures from the command's start until every node's client has had a
// tick from the new version. Also reported: the publish command alone (it validates the
// component in the real runtime before producing it), and the same with `--chunk-bytes 50000`
// (the chunked path a large component takes).
// Run: node bench/fleet-rollout.mjs   (needs target/release/flux-gateway, the built guests and
// tansu; ROUNDS overrides the 9 rounds per variant.)

import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
const { connect, gatewayBin, nextEvent, relayVersion, request, startBroker, startGateway, startSim } = await import(
  "../tests/e2e/harness.mjs"
);
const ROUNDS = Number(process.env.ROUNDS ?? 9);

const work = mkdtempSync(join(tmpdir(), "flux-fleet-bench-"));
const run = (...args) =>
  new Promise((done, failed) =>
    execFile(gatewayBin, args, (error, stdout, stderr) => (error ? failed(new Error(stderr)) : done(stdout))),
  );
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

const broker = await startBroker();
const key = join(work, "publisher.key");
const publicKey = (await run("plugin", "keygen", "--out", key)).trim();
const sim = await startSim(broker.brokers, "ticker_every_ms = 20\nsnapshot_every_ms = 60000\nanswer_after_ms = 20");
const nodes = [];
for (const name of ["node-a", "node-b", "node-c"]) {
  const plugins = join(work, name);
  mkdirSync(plugins);
  const toml = `[kafka]\nbrokers = "${broker.brokers}"\nnode_id = "${name}"\n[fleet]\ntrusted_keys = ["${publicKey}"]\nstatus_every_ms = 500\n`;
  nodes.push(await startGateway(toml, { plugins, waitReady: false }));
}

let version = 0;
async function round(extra) {
  const tag = `bench${String(++version).padStart(3, "0")}`;
  const file = join(work, `${tag}.wasm`);
  writeFileSync(file, relayVersion(tag));
  const started = performance.now();
  const live = Promise.all(
    clients.map((c) => nextEvent(c, "relayTick", { timeout: 60_000, since: c.received.length, accept: (p) => p.data.tag === tag })),
  );
  await run("plugin", "publish", file, "--brokers", broker.brokers, "--key", key, ...extra);
  const published = performance.now() - started;
  await live;
  return { published, live: performance.now() - started };
}

// The first release makes the nodes ready; clients join after it.
writeFileSync(join(work, "first.wasm"), relayVersion("bench000"));
await run("plugin", "publish", join(work, "first.wasm"), "--brokers", broker.brokers, "--key", key);
await Promise.all(nodes.map((n) => n.untilReady(60_000)));
const clients = await Promise.all(nodes.map((n) => connect(n.url)));
for (const client of clients) await request(client, "relayJoin");

for (const [variant, extra] of [
  ["one record per release", []],
  ["chunks of 50 KB", ["--chunk-bytes", "50000"]],
]) {
  const rounds = [];
  for (let i = 0; i < ROUNDS; i++) rounds.push(await round(extra));
  console.log(
    `${variant}: publish to live on 3 nodes median ${median(rounds.map((r) => r.live)).toFixed(0)} ms ` +
      `(min ${Math.min(...rounds.map((r) => r.live)).toFixed(0)}, max ${Math.max(...rounds.map((r) => r.live)).toFixed(0)}); ` +
      `the publish command alone median ${median(rounds.map((r) => r.published)).toFixed(0)} ms; ${ROUNDS} rounds`,
  );
}

for (const client of clients) client.close();
for (const node of nodes) await node.stop();
await sim.stop();
await broker.stop();
rmSync(work, { recursive: true, force: true });
