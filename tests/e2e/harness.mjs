// Starts real gateway processes and drives them with the official socket.io-client.
// Every wait has a timeout: a broken gateway fails a test, it never hangs the suite.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const gatewayBin = process.env.FLUX_GATEWAY_BIN ?? join(root, "target/debug/flux-gateway");
export const pluginDir = process.env.FLUX_PLUGIN_DIR ?? join(root, "target/plugins");

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

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
export async function startGateway(toml = "", { args = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "flux-e2e-"));
  const config = join(dir, "gateway.toml");
  writeFileSync(config, `listen = "127.0.0.1:0"\nplugin_dir = ${JSON.stringify(pluginDir)}\n${toml}\n`);
  const child = spawn(gatewayBin, ["--config", config, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, FLUX_LOG: process.env.FLUX_LOG ?? "info" },
  });
  const logs = [];
  child.stderr.setEncoding("utf8").on("data", (chunk) => logs.push(chunk));
  const exited = new Promise((done) => child.once("exit", (code, signal) => done({ code, signal })));

  const url = await withTimeout(
    new Promise((found, failed) => {
      let out = "";
      child.stdout.setEncoding("utf8").on("data", (chunk) => {
        out += chunk;
        const match = out.match(/listening on (http:\/\/\S+)/);
        if (match) found(match[1]);
      });
      exited.then(({ code }) => failed(new Error(`gateway exited with ${code}:\n${logs.join("")}`)));
    }),
    30_000,
    "the gateway to print its address",
  );
  await withTimeout(
    (async () => {
      for (;;) {
        const ready = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
        if (ready) return;
        await sleep(50);
      }
    })(),
    30_000,
    "the gateway to be ready",
  );

  return {
    url,
    logs: () => logs.join(""),
    async metric(name, labels = "") {
      const text = await (await fetch(`${url}/metrics`)).text();
      const line = text
        .split("\n")
        .find((l) => l.startsWith(name) && (labels === "" ? l.startsWith(`${name} `) : l.includes(labels)));
      return line ? Number(line.split(" ").pop()) : 0;
    },
    async stop() {
      child.kill("SIGTERM");
      return withTimeout(exited, 10_000, "the gateway to exit");
    },
  };
}

/** A connected socket.io-client over websocket that records every event it receives. */
export async function connect(url) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
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
