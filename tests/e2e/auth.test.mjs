// Handshake authentication (JWT: HS256, RS256/ES256 PEM keys, JWKS), token refresh and expiry,
// request and room authorization by scope, the private admin listener and the origin allowlist
// (the host behaviour of issues 9 and 15), driven with the official socket.io-client against
// real gateway processes. Tokens are minted here with node:crypto only.

import assert from "node:assert/strict";
import { createHmac, createSign, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  cleanup,
  connect,
  connectError,
  delhi,
  dump,
  eventually,
  mumbai,
  nextEvent,
  produce,
  request,
  sleep,
  startBroker,
  startGateway,
  withTimeout,
} from "./harness.mjs";
import { SNAPSHOT_EVENTS, UUID, assertSuccess, shapes } from "./shapes.mjs";

// ---- Tokens

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
const nowSecs = () => Math.floor(Date.now() / 1000);

/**
 * A compact JWS over `claims`. `alg`: HS256 / HS512 (`key` a secret), RS256 (`key` an RSA
 * private key), ES256 (`key` a P-256 private key), `none` (no signature).
 */
function jwt(claims, { alg = "HS256", key, kid, header = {} } = {}) {
  const head = { alg, typ: "JWT", ...(kid === undefined ? {} : { kid }), ...header };
  const input = `${b64url(head)}.${b64url(claims)}`;
  let signature;
  switch (alg) {
    case "HS256":
      signature = createHmac("sha256", key).update(input).digest();
      break;
    case "HS512":
      signature = createHmac("sha512", key).update(input).digest();
      break;
    case "RS256":
      signature = createSign("RSA-SHA256").update(input).sign(key);
      break;
    case "ES256":
      signature = sign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" });
      break;
    case "none":
      signature = Buffer.alloc(0);
      break;
    default:
      throw new Error(`no signer for ${alg}`);
  }
  return `${input}.${signature.toString("base64url")}`;
}

/** Claims valid for an hour, for `sub`. */
const claimsFor = (sub, extra = {}) => ({ sub, iat: nowSecs(), exp: nowSecs() + 3600, ...extra });

const rsaKeys = () => generateKeyPairSync("rsa", { modulusLength: 2048 });
const ecKeys = () => generateKeyPairSync("ec", { namedCurve: "P-256" });
const pem = (publicKey) => publicKey.export({ type: "spki", format: "pem" });
const jwk = (publicKey, kid, alg) => ({ ...publicKey.export({ format: "jwk" }), kid, alg, use: "sig" });

const secret = (what) => `${what}-${randomBytes(18).toString("hex")}`;

// ---- Helpers

/** A socket with `token` in its handshake `auth` payload (and any other io() options). */
const withToken = (url, token, options = {}) => connect(url, { auth: { token }, ...options });

/** A raw HTTP exchange (node:http: any header may be set, `Origin` and `Host` included). */
function http(url, { method = "GET", headers = {} } = {}) {
  return withTimeout(
    new Promise((done, failed) => {
      const req = httpRequest(url, { method, headers }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => done({ status: res.statusCode, headers: res.headers, body }));
      });
      req.on("error", failed);
      req.end();
    }),
    5_000,
    `${method} ${url}`,
  );
}

const pollingHandshake = (gateway) => `${gateway.url}/socket.io/?EIO=4&transport=polling`;

/** Records when and why a socket was disconnected. */
function watchDisconnect(socket) {
  socket.disconnected_ = null;
  socket.on("disconnect", (reason) => (socket.disconnected_ = { reason, at: Date.now() }));
  return socket;
}

const DEMO = "[demo]\nenabled = true\nticker_every_ms = 100\nsnapshot_every_ms = 500\nanswer_after_ms = 20\n";

const FORBIDDEN_STOCKS = { status: "error", message: 'stockTopPerformersRequest: requires the "stocks" scope' };

// ---- 1. HS256

describe("HS256 handshake", () => {
  const HS = secret("hs");
  const ISSUER = "https://issuer.example";
  const good = (sub, extra = {}, options = {}) =>
    jwt(claimsFor(sub, { aud: "flux", iss: ISSUER, ...extra }), { key: HS, ...options });
  let gateway;

  before(async () => {
    gateway = await startGateway(
      `[auth]\nmode = "jwt"\nhs256_secret = "${HS}"\naudience = "flux"\nissuer = "${ISSUER}"\n`,
    );
  });
  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("an accepted token: getUserId answers its sub, as the ack and as userUniqueId", async (t) => {
    const keep = cleanup(t);
    const socket = keep(await withToken(gateway.url, good("alice")));
    const event = nextEvent(socket, "userUniqueId");
    assert.equal(await request(socket, "getUserId"), "alice");
    assert.equal(await event, "alice");
    assert.equal(await request(socket, "getUserId"), "alice", "stable for the connection");
    // `aud` may be an array that contains the audience.
    const listed = keep(await withToken(gateway.url, good("bob", { aud: ["other", "flux"] })));
    assert.equal(await request(listed, "getUserId"), "bob");
  });

  test("the token may come as an Authorization: Bearer header instead", async (t) => {
    const keep = cleanup(t);
    const socket = keep(await connect(gateway.url, { extraHeaders: { authorization: `Bearer ${good("header-user")}` } }));
    assert.equal(await request(socket, "getUserId"), "header-user");
    const forged = jwt(claimsFor("header-user", { aud: "flux", iss: ISSUER }), { key: "not-the-secret" });
    assert.equal(
      await connectError(gateway.url, { extraHeaders: { authorization: `Bearer ${forged}` } }),
      "invalid token signature",
      "the header token is verified like the auth one",
    );
  });

  test("every refused handshake gets its exact message and is counted by outcome", async () => {
    const outcomes = ["missing", "expired", "bad_signature", "wrong_audience", "wrong_issuer", "malformed", "algorithm"];
    const count = async () =>
      Object.fromEntries(
        await Promise.all(outcomes.map(async (o) => [o, await gateway.metric("flux_auth_handshakes_total", `outcome="${o}"`)])),
      );
    const before = await count();

    const signed = good("victim");
    const [head, , sig] = signed.split(".");
    const tampered = `${head}.${b64url(claimsFor("admin", { aud: "flux", iss: ISSUER }))}.${sig}`;
    const noExp = jwt({ sub: "x", aud: "flux", iss: ISSUER, iat: nowSecs() }, { key: HS });
    const noSub = jwt({ aud: "flux", iss: ISSUER, iat: nowSecs(), exp: nowSecs() + 3600 }, { key: HS });
    const cases = [
      ["no token", {}, "authentication required: no token was sent", "missing"],
      ["expired a minute ago", { auth: { token: good("x", { exp: nowSecs() - 60 }) } }, "token expired", "expired"],
      ["signed with another secret", { auth: { token: good("x", {}, { key: "another-secret" }) } }, "invalid token signature", "bad_signature"],
      ["claims changed after signing", { auth: { token: tampered } }, "invalid token signature", "bad_signature"],
      ["wrong audience", { auth: { token: good("x", { aud: "someone-else" }) } }, "token audience not accepted", "wrong_audience"],
      ["wrong issuer", { auth: { token: good("x", { iss: "https://evil.example" }) } }, "token issuer not accepted", "wrong_issuer"],
      ["not a JWT", { auth: { token: "not-a-jwt" } }, "malformed token", "malformed"],
      ["three garbage parts", { auth: { token: "a.b.c" } }, "malformed token", "malformed"],
      ["no exp", { auth: { token: noExp } }, "malformed token", "malformed"],
      ["no sub", { auth: { token: noSub } }, "malformed token", "malformed"],
      ["alg none", { auth: { token: good("x", {}, { alg: "none" }) } }, "token algorithm not accepted", "algorithm"],
      ["HS512 with the right secret", { auth: { token: good("x", {}, { alg: "HS512" }) } }, "token algorithm not accepted", "algorithm"],
    ];
    const expected = Object.fromEntries(outcomes.map((o) => [o, 0]));
    for (const [what, options, message, outcome] of cases) {
      assert.equal(await connectError(gateway.url, options), message, what);
      expected[outcome] += 1;
    }
    const after = await count();
    for (const outcome of outcomes) {
      assert.equal(after[outcome] - before[outcome], expected[outcome], `flux_auth_handshakes_total{outcome="${outcome}"}`);
    }
    assert.ok((await gateway.metric("flux_auth_handshakes_total", 'outcome="accepted"')) >= 1);
  });

  test("the HS256 secret never appears in the log", () => {
    assert.ok(gateway.logs().length > 0);
    assert.ok(!gateway.logs().includes(HS), "the secret is not logged");
  });
});

// ---- 2. RS256 and ES256 PEM public keys

describe("RS256 and ES256 with PEM public key files", () => {
  const rsa = rsaKeys();
  const ec = ecKeys();
  let dir;
  let gateway;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "flux-keys-"));
    writeFileSync(join(dir, "rsa.pem"), pem(rsa.publicKey));
    writeFileSync(join(dir, "ec.pem"), pem(ec.publicKey));
    const files = [join(dir, "rsa.pem"), join(dir, "ec.pem")].map((f) => JSON.stringify(f)).join(", ");
    gateway = await startGateway(`[auth]\nmode = "jwt"\npublic_key_files = [${files}]\n`);
  });
  after(async () => {
    if (gateway) await gateway.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("tokens signed with the configured keys are accepted", async (t) => {
    const keep = cleanup(t);
    const viaRsa = keep(await withToken(gateway.url, jwt(claimsFor("rsa-user"), { alg: "RS256", key: rsa.privateKey })));
    assert.equal(await request(viaRsa, "getUserId"), "rsa-user");
    const viaEc = keep(await withToken(gateway.url, jwt(claimsFor("ec-user"), { alg: "ES256", key: ec.privateKey })));
    assert.equal(await request(viaEc, "getUserId"), "ec-user");
  });

  test("tokens signed by other keys are refused", async () => {
    const otherRsa = rsaKeys();
    const otherEc = ecKeys();
    assert.equal(
      await connectError(gateway.url, { auth: { token: jwt(claimsFor("x"), { alg: "RS256", key: otherRsa.privateKey }) } }),
      "invalid token signature",
    );
    assert.equal(
      await connectError(gateway.url, { auth: { token: jwt(claimsFor("x"), { alg: "ES256", key: otherEc.privateKey }) } }),
      "invalid token signature",
    );
    // Algorithm confusion: an HS256 token whose "secret" is the public RSA key.
    const confused = jwt(claimsFor("x"), { alg: "HS256", key: pem(rsa.publicKey) });
    const refused = await connectError(gateway.url, { auth: { token: confused } });
    assert.ok(["token algorithm not accepted", "invalid token signature"].includes(refused), refused);
  });
});

// ---- 3. JWKS

/** A JWKS endpoint on a local port: serves `keys`, or 500s, or never answers; counts requests. */
async function startJwks() {
  const hanging = [];
  const jwks = { keys: [], mode: "ok", requests: 0 };
  const server = createServer((req, res) => {
    jwks.requests += 1;
    if (jwks.mode === "hang") return void hanging.push(res);
    if (jwks.mode === "error") {
      res.writeHead(500, { "content-type": "text/plain" });
      return void res.end("internal error");
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ keys: jwks.keys }));
  });
  await new Promise((listening) => server.listen(0, "127.0.0.1", listening));
  jwks.url = `http://127.0.0.1:${server.address().port}/jwks.json`;
  let stopped = false;
  jwks.stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const res of hanging) res.destroy();
    server.closeAllConnections();
    await new Promise((closed) => server.close(() => closed()));
  };
  return jwks;
}

/** How long `work` took, in ms, with its result. */
async function timed(work) {
  const started = Date.now();
  const value = await work();
  return { value, ms: Date.now() - started };
}

describe("JWKS: keys by kid, rotation, an unavailable endpoint", () => {
  const JWKS_TIMEOUT_MS = 1500;
  const PROMPT_MS = 750;
  const k1 = rsaKeys();
  const k2 = ecKeys();
  const stranger = rsaKeys();
  const byK1 = (sub) => jwt(claimsFor(sub), { alg: "RS256", key: k1.privateKey, kid: "k1" });
  const byK2 = (sub) => jwt(claimsFor(sub), { alg: "ES256", key: k2.privateKey, kid: "k2" });
  const unknownKid = (kid) => jwt(claimsFor("x"), { alg: "RS256", key: stranger.privateKey, kid });
  let jwks;
  let gateway;

  before(async () => {
    jwks = await startJwks();
    jwks.keys = [jwk(k1.publicKey, "k1", "RS256")];
    gateway = await startGateway(
      `[auth]\nmode = "jwt"\njwks_url = "${jwks.url}"\njwks_timeout_ms = ${JWKS_TIMEOUT_MS}\njwks_min_refetch_ms = 0\n`,
    );
  });
  after(async () => {
    if (gateway) await gateway.stop();
    if (jwks) await jwks.stop();
  });

  test("a known kid is accepted without a fetch; an unknown kid is refetched, then refused", async (t) => {
    const keep = cleanup(t);
    const socket = keep(await withToken(gateway.url, byK1("jwks-user")));
    assert.equal(await request(socket, "getUserId"), "jwks-user");
    assert.ok(jwks.requests >= 1, "the JWKS was fetched");

    const known = jwks.requests;
    keep(await withToken(gateway.url, byK1("again")));
    assert.equal(jwks.requests, known, "a known kid needs no fetch");

    assert.equal(await connectError(gateway.url, { auth: { token: unknownKid("nobody-knows") } }), "unknown signing key");
    assert.ok(jwks.requests > known, "an unknown kid triggers a refetch");
    // A known kid with a signature by another key is a bad signature, not an unknown key.
    const wrongKey = jwt(claimsFor("x"), { alg: "RS256", key: stranger.privateKey, kid: "k1" });
    assert.equal(await connectError(gateway.url, { auth: { token: wrongKey } }), "invalid token signature");
  });

  test("key rotation: a new kid served by the endpoint is picked up", async (t) => {
    const keep = cleanup(t);
    assert.equal(await connectError(gateway.url, { auth: { token: byK2("too-early") } }), "unknown signing key");
    const fetched = jwks.requests;
    jwks.keys = [jwk(k1.publicKey, "k1", "RS256"), jwk(k2.publicKey, "k2", "ES256")];
    const socket = keep(await withToken(gateway.url, byK2("rotated")));
    assert.equal(await request(socket, "getUserId"), "rotated");
    assert.ok(jwks.requests > fetched, "the new kid was fetched");
  });

  test("the endpoint failing: known kids are still accepted promptly", async (t) => {
    const keep = cleanup(t);
    const promptly = async (token, sub, what) => {
      const { value: socket, ms } = await timed(() => withToken(gateway.url, token));
      keep(socket);
      assert.equal(await request(socket, "getUserId"), sub);
      assert.ok(ms < PROMPT_MS, `${what}: accepted in ${ms} ms (jwks_timeout_ms = ${JWKS_TIMEOUT_MS})`);
    };

    jwks.mode = "error";
    await promptly(byK1("during-500"), "during-500", "k1 while the endpoint answers 500");
    await promptly(byK2("during-500-ec"), "during-500-ec", "k2 while the endpoint answers 500");
    assert.equal(await connectError(gateway.url, { auth: { token: unknownKid("while-500") } }), "unknown signing key");

    jwks.mode = "hang";
    await promptly(byK1("during-hang"), "during-hang", "k1 while the endpoint never answers");
    // An unknown kid waits at most jwks_timeout_ms for the endpoint, then is refused; a known
    // kid arriving meanwhile is not held up behind that fetch.
    const { value: slowRefusal, ms: refusedIn } = await timed(async () => {
      const refusal = connectError(gateway.url, { auth: { token: unknownKid("while-hanging") } });
      refusal.catch(() => {}); // awaited below; never an unhandled rejection if the check fails first
      await sleep(100);
      await promptly(byK1("beside-a-hung-fetch"), "beside-a-hung-fetch", "k1 while an unknown-kid fetch hangs");
      return refusal;
    });
    assert.equal(slowRefusal, "unknown signing key");
    assert.ok(refusedIn < JWKS_TIMEOUT_MS + 2_500, `refused after ${refusedIn} ms (jwks_timeout_ms = ${JWKS_TIMEOUT_MS})`);

    await jwks.stop();
    await promptly(byK1("endpoint-gone"), "endpoint-gone", "k1 with the endpoint gone");
    await promptly(byK2("endpoint-gone-ec"), "endpoint-gone-ec", "k2 with the endpoint gone");
    const { value: gone, ms } = await timed(() => connectError(gateway.url, { auth: { token: unknownKid("gone") } }));
    assert.equal(gone, "unknown signing key");
    assert.ok(ms < JWKS_TIMEOUT_MS + 2_500, `refused after ${ms} ms`);
    assert.equal(gateway.process.exitCode, null, "still running");
  });
});

describe("JWKS: unknown kids cannot make the gateway hammer the endpoint", () => {
  test("jwks_min_refetch_ms bounds the refetches", async (t) => {
    const keep = cleanup(t);
    const jwks = keep(await startJwks());
    const k1 = rsaKeys();
    jwks.keys = [jwk(k1.publicKey, "k1", "RS256")];
    const gateway = keep(
      await startGateway(`[auth]\nmode = "jwt"\njwks_url = "${jwks.url}"\njwks_min_refetch_ms = 60000\n`),
    );
    const socket = keep(await withToken(gateway.url, jwt(claimsFor("u"), { alg: "RS256", key: k1.privateKey, kid: "k1" })));
    assert.equal(await request(socket, "getUserId"), "u");
    const fetched = jwks.requests;
    const other = rsaKeys();
    for (let i = 0; i < 5; i++) {
      const token = jwt(claimsFor("x"), { alg: "RS256", key: other.privateKey, kid: `random-${i}` });
      assert.equal(await connectError(gateway.url, { auth: { token } }), "unknown signing key");
    }
    assert.ok(jwks.requests - fetched <= 1, `five unknown kids caused ${jwks.requests - fetched} fetches`);
  });
});

// ---- 4. Refresh and expiry

describe("token refresh and expiry", () => {
  const HS = secret("refresh");
  const GRACE_MS = 1000;
  let gateway;

  before(async () => {
    gateway = await startGateway(
      `[auth]\nmode = "jwt"\nhs256_secret = "${HS}"\nleeway_secs = 0\nrefresh_grace_ms = ${GRACE_MS}\n`,
    );
  });
  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("a refreshed socket outlives its first token; one that does not refresh is disconnected", async (t) => {
    const keep = cleanup(t);
    const exp = nowSecs() + 3; // 2 to 3 s from now
    const short = (sub) => jwt({ sub, iat: nowSecs(), exp }, { key: HS });
    const longExp = nowSecs() + 3600;
    const long = (sub) => jwt({ sub, iat: nowSecs(), exp: longExp }, { key: HS });

    const [refreshing, idle, stranger, late] = await Promise.all(
      ["alice", "bob", "carol", "dave"].map((sub) => withToken(gateway.url, short(sub)).then(keep).then(watchDisconnect)),
    );

    // Before expiry: a fresh token for the same user is accepted.
    const refreshed = await request(refreshing, "refreshToken", { token: long("alice") });
    assert.equal(refreshed.status, "success", JSON.stringify(refreshed));
    assert.equal(refreshed.expiresAt, longExp);
    // Refused refreshes, with their messages; the socket keeps its current token.
    assert.deepEqual(await request(stranger, "refreshToken", { token: long("mallory") }), {
      status: "error",
      message: "the token is for another user",
    });
    assert.deepEqual(await request(stranger, "refreshToken", { token: jwt({ sub: "carol", exp: longExp }, { key: "wrong" }) }), {
      status: "error",
      message: "invalid token signature",
    });
    assert.deepEqual(await request(stranger, "refreshToken", { token: jwt({ sub: "carol", exp: nowSecs() - 60 }, { key: HS }) }), {
      status: "error",
      message: "token expired",
    });
    assert.equal(stranger.connected, true, "a refused refresh does not disconnect by itself");

    // After exp but within the grace: still allowed (the token as a plain string).
    await sleep(exp * 1000 + 300 - Date.now());
    const lateAck = await request(late, "refreshToken", long("dave"));
    assert.equal(lateAck.status, "success", `a refresh ${Date.now() - exp * 1000} ms after exp: ${JSON.stringify(lateAck)}`);
    assert.equal(lateAck.expiresAt, longExp);

    // The socket that never refreshed: an error event, then a server disconnect.
    await eventually(() => idle.disconnected_, { timeout: exp * 1000 + GRACE_MS + 4_000 - Date.now(), what: "bob to be disconnected" });
    assert.equal(idle.disconnected_.reason, "io server disconnect");
    assert.ok(
      idle.disconnected_.at >= exp * 1000 + GRACE_MS - 250,
      `disconnected ${exp * 1000 + GRACE_MS - idle.disconnected_.at} ms before exp + grace`,
    );
    assert.deepEqual(await nextEvent(idle, "error", { timeout: 1 }), {
      status: "error",
      message: "session expired: the token was not refreshed",
    });
    await eventually(() => stranger.disconnected_, { timeout: 3_000, what: "carol (refused refresh) to be disconnected" });
    assert.equal(stranger.disconnected_.reason, "io server disconnect");

    // Well past exp + grace, the refreshed sockets are still served as the same user.
    await sleep(exp * 1000 + GRACE_MS + 2_500 - Date.now());
    for (const [socket, sub] of [
      [refreshing, "alice"],
      [late, "dave"],
    ]) {
      assert.equal(socket.connected, true, `${sub} is still connected`);
      assert.equal(socket.disconnected_, null);
      assert.equal(await request(socket, "getUserId"), sub);
      assert.ok(!socket.received.some((e) => e.event === "error"), `${sub} got no error`);
    }

    assert.ok((await gateway.metric("flux_auth_expired_disconnects_total")) >= 2);
    assert.ok((await gateway.metric("flux_auth_refreshes_total", 'outcome="accepted"')) >= 2);
    assert.ok((await gateway.metric("flux_auth_refreshes_total", 'outcome="refused"')) >= 3);
  });
});

// ---- 5 (and the live half of 6). On Kafka: the user is the token's subject; scopes gate live emits

describe("on Kafka with JWT", () => {
  const HS = secret("kafka");
  let broker;
  let gateway;
  const token = (sub, scope) => jwt(claimsFor(sub, scope ? { scope } : {}), { key: HS });

  before(async () => {
    broker = await startBroker();
    gateway = await startGateway(
      `[kafka]\nbrokers = "${broker.brokers}"\nnode_id = "auth"\n` +
        `[auth]\nmode = "jwt"\nhs256_secret = "${HS}"\n[plugins.stocks]\nrequired_scope = "stocks"\n`,
    );
  });
  after(async () => {
    if (gateway) await gateway.stop();
    if (broker) await broker.stop();
  });

  test("a client cannot impersonate another user: commands carry the token's sub", async (t) => {
    const keep = cleanup(t);
    const alice = keep(await withToken(gateway.url, token("alice")));
    assert.equal(await request(alice, "getUserId"), "alice");
    assert.equal((await request(alice, "userLocationUpdate", delhi, "mallory")).status, "success");
    assert.equal((await request(alice, "userLocationUpdate", { ...mumbai, userId: "mallory" })).status, "success");
    const commands = await eventually(
      async () => {
        const found = await dump(broker.brokers, "weather.service.command.fetch").catch(() => []);
        return found.length >= 2 && found;
      },
      { what: "two weather fetch commands" },
    );
    const payloads = commands.map((c) => JSON.parse(c.payload));
    assert.deepEqual(payloads.map((p) => p.cityKey).sort(), ["delhi", "mumbai"]);
    for (const payload of payloads) assert.equal(payload.userId, "alice", JSON.stringify(payload));
    assert.ok(!commands.some((c) => c.payload.includes("mallory")), "mallory appears in no command");
  });

  test("a live stock record reaches only the socket with the stocks scope", async (t) => {
    const keep = cleanup(t);
    const scoped = keep(await withToken(gateway.url, token("stock-reader", "weather stocks")));
    const plain = keep(await withToken(gateway.url, token("no-stocks", "weather")));
    assert.equal((await request(scoped, "userLocationUpdate", delhi)).status, "success");
    assert.equal((await request(plain, "userLocationUpdate", delhi)).status, "success");
    const performers = [{ symbol: "FLUXT", name: "Flux Test", price: 12.34, changePercent: 5.6 }];
    await produce(broker.brokers, "stock.service.event.top-performers", "top-performers", JSON.stringify({ performers }));
    const live = await nextEvent(scoped, "stockTopPerformersResponse", {
      timeout: 15_000,
      accept: (p) => p.status === "success" && p.data[0]?.symbol === "FLUXT",
    });
    assert.deepEqual(live.data, performers);
    await sleep(1_000);
    assert.ok(!plain.received.some((e) => e.event === "stockTopPerformersResponse"), "no stock emit without the scope");
  });
});

// ---- 6. Scopes on the embedded bus with live data

describe("scopes: [plugins.stocks] required_scope", () => {
  const HS = secret("scopes");
  const token = (sub, scope) => jwt(claimsFor(sub, scope === undefined ? {} : { scope }), { key: HS });
  let gateway;

  before(async () => {
    gateway = await startGateway(
      `${DEMO}[auth]\nmode = "jwt"\nhs256_secret = "${HS}"\n[plugins.stocks]\nrequired_scope = "stocks"\n`,
    );
  });
  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("without the scope: the stock request is refused, the other domains are served, no stock event ever", async (t) => {
    const keep = cleanup(t);
    const forbiddenBefore = await gateway.metric("flux_requests_forbidden_total", 'plugin="stocks"');
    const plain = keep(await withToken(gateway.url, token("plain", "weather crypto news")));
    const unscoped = keep(await withToken(gateway.url, token("unscoped")));
    const lookalike = keep(await withToken(gateway.url, token("lookalike", ["stock", "stocks:read", "stocksx"])));

    for (const socket of [plain, unscoped, lookalike]) {
      const since = socket.received.length;
      assert.deepEqual(await request(socket, "stockTopPerformersRequest"), FORBIDDEN_STOCKS);
      assert.deepEqual(await nextEvent(socket, "error", { since }), FORBIDDEN_STOCKS, "also sent as an error event");
    }
    assert.ok((await gateway.metric("flux_requests_forbidden_total", 'plugin="stocks"')) >= forbiddenBefore + 3);

    const ack = await request(plain, "userLocationUpdate", delhi);
    assert.equal(ack.status, "success", JSON.stringify(ack));
    assert.ok(!plain.received.some((e) => e.event === "stockTopPerformersResponse"), "not hydrated with stocks");
    const since = plain.received.length;
    assertSuccess(await nextEvent(plain, "weather.delhi.update", { timeout: 10_000 }), (d) => assert.equal(d.city, "Delhi"));
    assertSuccess(await nextEvent(plain, "cryptoTickerResponse", { since }));
    for (const event of ["cryptoTopMoversResponse", "cryptoTopCoinsResponse", "newsUpdate"]) {
      shapes[event](await nextEvent(plain, event, { since, timeout: 5_000 }));
    }
    // About four snapshot periods of live data.
    await sleep(2_000);
    assert.ok(plain.received.filter((e) => e.event === "newsUpdate").length >= 2, "live snapshots kept coming");
    assert.ok(!plain.received.some((e) => e.event === "stockTopPerformersResponse"), "never a stock event");
    assert.equal(plain.connected, true);
  });

  test("with the scope (a string or an array): the stock request answers and the room is joined", async (t) => {
    const keep = cleanup(t);
    const scoped = keep(await withToken(gateway.url, token("scoped", "news stocks")));
    const listed = keep(await withToken(gateway.url, token("listed", ["stocks"])));
    // The stock plugin's start-up refresh fills the cache; until then a request answers loading.
    const answer = await eventually(
      async () => {
        const ack = await request(scoped, "stockTopPerformersRequest");
        return ack.status === "success" && ack;
      },
      { what: "a cached stock answer" },
    );
    shapes.stockTopPerformersResponse(answer);
    shapes.stockTopPerformersResponse(await request(listed, "stockTopPerformersRequest"));
    for (const socket of [scoped, listed]) {
      const since = socket.received.length;
      assert.equal((await request(socket, "userLocationUpdate", mumbai)).status, "success");
      const hydrated = socket.received.slice(since).map((e) => e.event);
      for (const event of SNAPSHOT_EVENTS) assert.ok(hydrated.includes(event), `hydrated with ${event}: ${hydrated}`);
      shapes.stockTopPerformersResponse(await nextEvent(socket, "stockTopPerformersResponse", { since }));
    }
  });
});

// ---- 7. Admin surface

describe("the admin listener", () => {
  const ADMIN = secret("admin");
  const HS = secret("jwt");
  let gateway;

  before(async () => {
    gateway = await startGateway(`[admin]\ntoken = "${ADMIN}"\n[auth]\nmode = "jwt"\nhs256_secret = "${HS}"\n`, {
      adminToken: ADMIN,
      env: { FLUX_LOG: "info,flux_gateway=debug" },
    });
  });
  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("the public listener serves probes, never metrics or admin", async () => {
    assert.notEqual(gateway.adminUrl, gateway.url);
    for (const path of ["/metrics", "/admin/plugins"]) {
      assert.equal((await fetch(`${gateway.url}${path}`)).status, 404, `public ${path}`);
      assert.equal(
        (await fetch(`${gateway.url}${path}`, { headers: { authorization: `Bearer ${ADMIN}` } })).status,
        404,
        `public ${path}, even with the token`,
      );
    }
    for (const path of ["/healthz", "/readyz"]) assert.equal((await fetch(`${gateway.url}${path}`)).status, 200, `public ${path}`);
  });

  test("the admin listener: probes open, metrics and admin behind the bearer token", async () => {
    for (const path of ["/healthz", "/readyz"]) {
      assert.equal((await fetch(`${gateway.adminUrl}${path}`)).status, 200, `admin ${path} without a token`);
    }
    for (const path of ["/metrics", "/admin/plugins"]) {
      const url = `${gateway.adminUrl}${path}`;
      assert.equal((await fetch(url)).status, 401, `${path} without a header`);
      assert.equal((await fetch(url, { headers: { authorization: "Bearer wrong" } })).status, 401, `${path}, wrong token`);
      assert.equal((await fetch(url, { headers: { authorization: ADMIN } })).status, 401, `${path}, no Bearer scheme`);
      assert.equal((await fetch(url, { headers: { authorization: `Bearer ${ADMIN}x` } })).status, 401, `${path}, a longer token`);
      assert.equal((await gateway.admin(path)).status, 200, `${path} with the token`);
    }
    const plugins = await (await gateway.admin("/admin/plugins")).json();
    assert.deepEqual(plugins.plugins.map((p) => p.name).sort(), ["crypto", "news", "stocks", "weather"]);
  });

  test("neither the admin token nor the JWT secret is ever logged", async (t) => {
    const keep = cleanup(t);
    const socket = keep(await withToken(gateway.url, jwt(claimsFor("logged"), { key: HS })));
    assert.equal(await request(socket, "getUserId"), "logged");
    await connectError(gateway.url, { auth: { token: jwt(claimsFor("x"), { key: "wrong" }) } });
    await fetch(`${gateway.adminUrl}/metrics`, { headers: { authorization: "Bearer wrong" } });
    await sleep(200);
    const logs = gateway.logs();
    assert.ok(logs.length > 0);
    assert.ok(!logs.includes(ADMIN), "admin token not logged");
    assert.ok(!logs.includes(HS), "JWT secret not logged");
  });

  test("secrets from { env = ... } and { file = ... }, and from FLUX_ADMIN_TOKEN / FLUX_AUTH_HS256_SECRET", async (t) => {
    const keep = cleanup(t);
    const dir = mkdtempSync(join(tmpdir(), "flux-secret-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const fromEnv = secret("admin-env");
    const fromFile = secret("jwt-file");
    writeFileSync(join(dir, "hs256"), `${fromFile}\n`);
    const referenced = keep(
      await startGateway(
        `[admin]\ntoken = { env = "FLUX_TEST_ADMIN_TOKEN" }\n` +
          `[auth]\nmode = "jwt"\nhs256_secret = { file = ${JSON.stringify(join(dir, "hs256"))} }\n`,
        { adminToken: fromEnv, env: { FLUX_TEST_ADMIN_TOKEN: fromEnv } },
      ),
    );
    assert.equal((await fetch(`${referenced.adminUrl}/metrics`)).status, 401);
    assert.equal((await referenced.admin("/metrics")).status, 200, "the token from the environment variable");
    const socket = keep(await withToken(referenced.url, jwt(claimsFor("file-user"), { key: fromFile })));
    assert.equal(await request(socket, "getUserId"), "file-user", "the secret from the file, newline dropped");
    assert.ok(!referenced.logs().includes(fromEnv) && !referenced.logs().includes(fromFile), "not logged");

    const adminVar = secret("admin-var");
    const hsVar = secret("jwt-var");
    const byVars = keep(
      await startGateway("", {
        adminToken: adminVar,
        env: { FLUX_ADMIN_TOKEN: adminVar, FLUX_AUTH_MODE: "jwt", FLUX_AUTH_HS256_SECRET: hsVar },
      }),
    );
    assert.equal((await fetch(`${byVars.adminUrl}/admin/plugins`)).status, 401);
    assert.equal((await byVars.admin("/admin/plugins")).status, 200);
    assert.equal(await connectError(byVars.url), "authentication required: no token was sent");
    const viaVar = keep(await withToken(byVars.url, jwt(claimsFor("var-user"), { key: hsVar })));
    assert.equal(await request(viaVar, "getUserId"), "var-user");
    assert.ok(!byVars.logs().includes(adminVar) && !byVars.logs().includes(hsVar), "not logged");
  });
});

// ---- 8. Origins

describe("the origin allowlist", () => {
  const APP = "http://app.example";
  const EVIL = "http://evil.example";
  let gateway;

  before(async () => {
    gateway = await startGateway(`[socket]\nallowed_origins = ["${APP}"]\n`);
  });
  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("websocket: a foreign origin is refused, the allowed one and origin-less clients connect", async (t) => {
    const keep = cleanup(t);
    const refusedBefore = await gateway.metric("flux_origin_refused_total");
    const refused = await connectError(gateway.url, { extraHeaders: { origin: EVIL } });
    assert.equal(typeof refused, "string");
    // A loopback origin is not allowed once the list is set.
    await connectError(gateway.url, { extraHeaders: { origin: "http://localhost:5173" } });
    const allowed = keep(await connect(gateway.url, { extraHeaders: { origin: APP } }));
    assert.match(await request(allowed, "getUserId"), UUID);
    const native = keep(await connect(gateway.url));
    assert.match(await request(native, "getUserId"), UUID, "no Origin header: a non-browser client");
    assert.ok((await gateway.metric("flux_origin_refused_total")) >= refusedBefore + 2);
  });

  test("polling and CORS: 403 for a foreign origin, Access-Control-Allow-Origin only for the allowed one", async () => {
    const evil = await http(pollingHandshake(gateway), { headers: { origin: EVIL } });
    assert.equal(evil.status, 403);
    assert.notEqual(evil.headers["access-control-allow-origin"], EVIL);
    assert.notEqual(evil.headers["access-control-allow-origin"], "*");
    const app = await http(pollingHandshake(gateway), { headers: { origin: APP } });
    assert.equal(app.status, 200, app.body);
    assert.equal(app.headers["access-control-allow-origin"], APP);
    const preflight = await http(pollingHandshake(gateway), {
      method: "OPTIONS",
      headers: { origin: APP, "access-control-request-method": "POST", "access-control-request-headers": "content-type" },
    });
    assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight answered ${preflight.status}`);
    assert.equal(preflight.headers["access-control-allow-origin"], APP);
    const evilPreflight = await http(pollingHandshake(gateway), {
      method: "OPTIONS",
      headers: { origin: EVIL, "access-control-request-method": "POST" },
    });
    assert.notEqual(evilPreflight.headers["access-control-allow-origin"], EVIL);
    assert.notEqual(evilPreflight.headers["access-control-allow-origin"], "*");
    const none = await http(pollingHandshake(gateway));
    assert.equal(none.status, 200, "no Origin: passes");
  });
});

// ---- 9. Mode none (the default)

describe("mode none (the default)", () => {
  let gateway;

  before(async () => {
    gateway = await startGateway("");
  });
  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("a client without a token is served a server UUID; a token sent anyway is ignored", async (t) => {
    const keep = cleanup(t);
    const socket = keep(await connect(gateway.url));
    const id = await request(socket, "getUserId");
    assert.match(id, UUID);
    assert.equal(await nextEvent(socket, "userUniqueId"), id);
    const withAToken = keep(await withToken(gateway.url, jwt(claimsFor("someone"), { key: "whatever" })));
    assert.match(await request(withAToken, "getUserId"), UUID);
    assert.equal((await gateway.admin("/metrics")).status, 200, "no admin token configured: metrics open on the admin port");
    assert.equal((await fetch(`${gateway.url}/metrics`)).status, 404);
  });

  test("default origins: loopback and the gateway's own origin pass, others are refused", async () => {
    for (const origin of ["http://localhost:5173", "https://localhost", "http://127.0.0.1:8099", "http://127.3.4.5", "http://[::1]:3000"]) {
      const res = await http(pollingHandshake(gateway), { headers: { origin } });
      assert.equal(res.status, 200, `${origin}: ${res.body}`);
    }
    const own = await http(pollingHandshake(gateway), {
      headers: { origin: "http://flux.example:8443", host: "flux.example:8443" },
    });
    assert.equal(own.status, 200, "the gateway's own origin (Origin host == Host)");
    for (const origin of ["http://evil.example", "http://localhost.evil.example", "http://127.0.0.1.evil.example", "null"]) {
      const res = await http(pollingHandshake(gateway), { headers: { origin } });
      assert.equal(res.status, 403, origin);
    }
    const hostMismatch = await http(pollingHandshake(gateway), {
      headers: { origin: "http://flux.example:8443", host: "other.example:8443" },
    });
    assert.equal(hostMismatch.status, 403, "Origin host != Host");
    assert.equal(typeof (await connectError(gateway.url, { extraHeaders: { origin: "http://evil.example" } })), "string");
  });

  test("mode none warns at start when listening beyond loopback", async (t) => {
    const keep = cleanup(t);
    const warning = /WARN.*authentication/i;
    assert.doesNotMatch(gateway.logs(), warning, "no warning on a loopback address");
    const exposed = keep(await startGateway("", { args: ["--listen", "0.0.0.0:0"] }));
    assert.match(exposed.logs(), warning);
  });

  test("mode none with a required scope: there are no scopes, the stock request is refused", async (t) => {
    const keep = cleanup(t);
    const scoped = keep(await startGateway("[plugins.stocks]\nrequired_scope = \"stocks\"\n"));
    const socket = keep(await connect(scoped.url));
    assert.deepEqual(await request(socket, "stockTopPerformersRequest"), FORBIDDEN_STOCKS);
    assert.match(await request(socket, "getUserId"), UUID);
  });
});
