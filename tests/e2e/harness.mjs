// Starts real gateway processes and drives them with the official socket.io-client.
// Every wait has a timeout: a broken gateway fails a test, it never hangs the suite.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const gatewayBin = process.env.FLUX_GATEWAY_BIN ?? join(root, "target/debug/flux-gateway");
export const pluginDir = process.env.FLUX_PLUGIN_DIR ?? join(root, "target/plugins");
export const wasmDir = process.env.FLUX_WASM_DIR ?? join(root, "target/wasm32-wasip2/release");

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** The demo services at test speed: the ticker every 20 ms, scheduled snapshots out of the way. */
export const FAST_DEMO = `
[demo]
enabled = true
ticker_every_ms = 20
snapshot_every_ms = 60000
answer_after_ms = 20
`;

let relayBuild;

// Gateways still running when this process exits (a failed test or benchmark script that
// never reached `stop()`) are killed with it, rather than left serving in the background.
const running = new Set();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * The `relay` fixture with its 8-character version tag patched in — a distinct version per
 * tag, without a rebuild (see tests/fixtures/relay) — and, for `trap` and `loop` versions, the
 * unix time (ms) from which they misbehave on every record.
 */
export function relayVersion(tag, armedAt = 0) {
  if (tag.length !== 8) throw new Error(`a relay tag has 8 characters: ${tag}`);
  relayBuild ??= readFileSync(join(wasmDir, "flux_fixture_relay.wasm"));
  const patched = Buffer.from(relayBuild);
  for (const [marker, value] of [["FLUXTAG:v0000000", `FLUXTAG:${tag}`], ["FLUXARM:0000000000000000", `FLUXARM:${String(armedAt).padStart(16, "0")}`]]) {
    const at = relayBuild.indexOf(Buffer.from(marker));
    if (at < 0) throw new Error(`the relay fixture carries no ${marker}`);
    Buffer.from(value).copy(patched, at);
  }
  return patched;
}

/** Writes like a build tool: a hidden temporary file, renamed over `file`. */
export function deploy(file, bytes) {
  const temporary = join(dirname(file), `.${basename(file)}.tmp`);
  writeFileSync(temporary, bytes);
  renameSync(temporary, file);
}

/** Rejects after `ms` with `what` in the message. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Starts a gateway with `toml` as its configuration (plus the listen address and plugin
 * directory), waits until it reports ready, and returns how to reach and stop it.
 */
export async function startGateway(
  toml = "",
  { args = [], waitReady = true, plugins = pluginDir, adminToken, env = {} } = {},
) {
  const dir = mkdtempSync(join(tmpdir(), "flux-e2e-"));
  const config = join(dir, "gateway.toml");
  writeFileSync(config, `listen = "127.0.0.1:0"\nplugin_dir = ${JSON.stringify(plugins)}\n${toml}\n`);
  // The admin listener's default port is fixed; every test gateway takes a free one instead.
  const child = spawn(gatewayBin, ["--config", config, "--admin-listen", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, FLUX_LOG: process.env.FLUX_LOG ?? "info", ...env },
  });
  const logs = [];
  child.stderr.setEncoding("utf8").on("data", (chunk) => logs.push(chunk));
  running.add(child);
  const exited = new Promise((done) =>
    child.once("exit", (code, signal) => {
      running.delete(child);
      done({ code, signal });
    }),
  );

  const [url, adminUrl] = await withTimeout(
    new Promise((found, failed) => {
      let out = "";
      child.stdout.setEncoding("utf8").on("data", (chunk) => {
        out += chunk;
        const listening = out.match(/listening on (http:\/\/\S+)/);
        const admin = out.match(/admin on (http:\/\/\S+)/);
        if (listening && admin) found([listening[1], admin[1]]);
      });
      exited.then(({ code }) => failed(new Error(`gateway exited with ${code}:\n${logs.join("")}`)));
    }),
    30_000,
    "the gateway to print its addresses",
  );
  const sockets = [];
  const adminHeaders = adminToken ? { authorization: `Bearer ${adminToken}` } : {};
  const gateway = {
    url,
    /** The private listener: `/metrics`, `/admin/*` and the probes. */
    adminUrl,
    process: child,
    /** A GET on the admin listener, with the admin token when the gateway has one. */
    admin(path) {
      return fetch(`${adminUrl}${path}`, { headers: adminHeaders });
    },
    /** A connected client, closed by `stop()`. */
    async open() {
      const socket = await connect(url);
      sockets.push(socket);
      return socket;
    },
    async ready() {
      return fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    },
    async untilReady(timeout = 30_000) {
      await withTimeout(
        (async () => {
          while (!(await gateway.ready())) await sleep(50);
        })(),
        timeout,
        "the gateway to be ready",
      );
    },
    logs: () => logs.join(""),
    async metric(name, labels = "") {
      const text = await (await gateway.admin("/metrics")).text();
      const line = text
        .split("\n")
        .find((l) => l.startsWith(name) && (labels === "" ? l.startsWith(`${name} `) : l.includes(labels)));
      return line ? Number(line.split(" ").pop()) : 0;
    },
    async stop() {
      for (const socket of sockets) socket.close();
      if (child.exitCode === null) child.kill("SIGTERM");
      return withTimeout(exited, 10_000, "the gateway to exit");
    },
  };
  if (waitReady) await gateway.untilReady();
  return gateway;
}

/**
 * A connected socket.io-client over websocket that records every event it receives.
 * `options` go to `io()` (e.g. `{ auth: { token } }`).
 */
export async function connect(url, options = {}) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true, ...options });
  socket.received = [];
  socket.onAny((event, ...args) => socket.received.push({ event, args }));
  await withTimeout(
    new Promise((done, failed) => {
      socket.once("connect", done);
      socket.once("connect_error", failed);
    }),
    10_000,
    "the socket to connect",
  );
  return socket;
}

/** The `connect_error` message a handshake with `options` is refused with. */
export async function connectError(url, options = {}) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true, ...options });
  try {
    return await withTimeout(
      new Promise((refused, accepted) => {
        socket.once("connect_error", (error) => refused(error.message));
        socket.once("connect", () => accepted(new Error("the handshake was accepted")));
      }),
      10_000,
      "the handshake to be refused",
    );
  } finally {
    socket.close();
  }
}

/** The first `event` (already received or still to come) whose payload satisfies `accept`. */
export function nextEvent(socket, event, { timeout = 5_000, accept = () => true, since = 0 } = {}) {
  const seen = socket.received.slice(since).find((e) => e.event === event && accept(e.args[0]));
  if (seen) return Promise.resolve(seen.args[0]);
  return withTimeout(
    new Promise((done) => {
      const listener = (name, payload) => {
        if (name === event && accept(payload)) {
          socket.offAny(listener);
          done(payload);
        }
      };
      socket.onAny(listener);
    }),
    timeout,
    `event ${event}`,
  );
}

/** Emits with an acknowledgement, bounded in time. */
export function request(socket, event, ...args) {
  return withTimeout(socket.emitWithAck(event, ...args), 5_000, `the ack of ${event}`);
}

export const delhi = { city: "Delhi", region: "Delhi", country: "IN", lat: "28.61", lon: "77.20", ip: "203.0.113.7" };
export const mumbai = { city: "Mumbai", region: "Maharashtra", country: "IN", lat: "19.07", lon: "72.87", ip: "203.0.113.8" };

// ---- Kafka: a tansu broker per test, the simulated services as their own process, and a
// probe (librdkafka) to read and write records on the wire.

export const tansuBin = process.env.TANSU_BIN ?? "tansu";
export const probeBin = process.env.FLUX_KAFKA_PROBE ?? join(root, "target/debug/kafka-probe");

/** A port nothing listens on right now. */
export async function freePort() {
  const { createServer } = await import("node:net");
  return new Promise((done) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

async function accepting(port) {
  const { connect: tcp } = await import("node:net");
  return new Promise((done) => {
    const socket = tcp(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      done(true);
    });
    socket.once("error", () => done(false));
  });
}

/**
 * Starts a tansu broker on `port` with in-memory storage, or SQLite storage in `sqliteFile`
 * (which survives a restart).
 */
export async function startBroker({ port, sqliteFile } = {}) {
  port ??= await freePort();
  const url = `tcp://127.0.0.1:${port}`;
  // tansu resolves a SQLite path relative to its working directory.
  const storage = sqliteFile ? `sqlite://${basename(sqliteFile)}` : "memory://tansu/";
  const child = spawn(
    tansuBin,
    ["broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", storage],
    {
      cwd: sqliteFile ? dirname(sqliteFile) : undefined,
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, RUST_LOG: "warn" },
    },
  );
  const logs = [];
  child.stderr.setEncoding("utf8").on("data", (chunk) => logs.push(chunk));
  const exited = new Promise((done) => child.once("exit", (code, signal) => done({ code, signal })));
  await withTimeout(
    (async () => {
      while (!(await accepting(port))) {
        if (child.exitCode !== null) throw new Error(`tansu exited:\n${logs.join("")}`);
        await sleep(50);
      }
    })(),
    20_000,
    "the broker to listen",
  );
  return {
    port,
    brokers: `127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) child.kill("SIGKILL");
      await withTimeout(exited, 10_000, "the broker to exit");
    },
  };
}

/**
 * Spawns a service that prints `marker` on stdout once it serves; resolves when it has, with
 * its stderr so far and how to stop it.
 */
async function startService(what, command, args, { env = process.env, marker, timeout }) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env });
  const logs = [];
  child.stderr.setEncoding("utf8").on("data", (chunk) => logs.push(chunk));
  const exited = new Promise((done) => child.once("exit", (code, signal) => done({ code, signal })));
  await withTimeout(
    new Promise((ready, failed) => {
      child.stdout.setEncoding("utf8").on("data", (chunk) => chunk.includes(marker) && ready());
      exited.then(({ code }) => failed(new Error(`${what} exited with ${code}:\n${logs.join("")}`)));
    }),
    timeout,
    `${what} to start`,
  );
  return {
    process: child,
    logs: () => logs.join(""),
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await withTimeout(exited, 10_000, `${what} to exit`);
    },
  };
}

/**
 * The Node.js socket.io peer (bench/peer) against `brokers`, in production mode; resolves
 * once its Kafka consumer has joined its group.
 */
export async function startPeer(brokers, env = {}) {
  const port = await freePort();
  const peer = await startService("the Node peer", process.execPath, [join(root, "bench/peer/server.mjs")], {
    env: { ...process.env, ...env, NODE_ENV: "production", PORT: String(port), BROKERS: brokers },
    marker: "ready",
    timeout: 60_000,
  });
  return { ...peer, url: `http://127.0.0.1:${port}` };
}

/** The simulated upstream services as their own process against `brokers`. */
export async function startSim(brokers, demo = "ticker_every_ms = 100\nsnapshot_every_ms = 500\nanswer_after_ms = 20") {
  const dir = mkdtempSync(join(tmpdir(), "flux-sim-"));
  const config = join(dir, "sim.toml");
  writeFileSync(config, `[demo]\n${demo}\n[kafka]\nbrokers = "${brokers}"\n`);
  return startService("the simulated services", gatewayBin, ["sim", "--config", config], {
    marker: "sim running",
    timeout: 20_000,
  });
}

function probe(...args) {
  return new Promise((done, failed) => {
    const child = spawn(probeBin, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (c) => (out += c));
    child.stderr.setEncoding("utf8").on("data", (c) => (err += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      code === 0 ? done(out) : failed(new Error(`kafka-probe ${args.join(" ")} failed (${code}): ${err}`));
    });
  });
}

/** Produces one record; `key` null for none. */
export const produce = (brokers, topic, key, payload) => probe("produce", brokers, topic, key ?? "-", payload);

/** Every record now on `topic`: `{partition, offset, key, payload, headers}`. */
export async function dump(brokers, topic) {
  const out = await probe("dump", brokers, topic);
  return out.split("\n").filter(Boolean).map((line) => JSON.parse(line));
}

/**
 * Stops or closes everything a test opened, newest first, even when the test failed:
 * `const keep = cleanup(t); const broker = keep(await startBroker());`.
 */
export function cleanup(t) {
  const stack = [];
  t.after(async () => {
    for (const stop of stack.reverse()) await stop().catch(() => {});
  });
  return (thing) => {
    stack.push(thing.stop ? () => thing.stop() : async () => thing.close());
    return thing;
  };
}

/** Waits until `check()` resolves truthy, polling. */
export async function eventually(check, { timeout = 15_000, every = 100, what = "a condition" } = {}) {
  return withTimeout(
    (async () => {
      for (;;) {
        const value = await check();
        if (value) return value;
        await sleep(every);
      }
    })(),
    timeout,
    what,
  );
}
