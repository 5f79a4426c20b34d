// reject_with = "socketio": the gateway refuses like an io.use() middleware would, so the
// official client (socket.io-client 4.x) emits connect_error once with the reason and
// the code, is left inactive, and does not retry; the upstream never sees it.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";
import { Server } from "socket.io";
import { io } from "socket.io-client";
import { claimsFor, connectAndWelcome, mint, once, startGateway, stopAll } from "./harness.mjs";

after(stopAll);

/** How long a refused client is watched for retries. */
const QUIET_MS = 10_000;

/** A plain Node socket.io server that counts everything reaching it. */
async function countingServer(use, opts = {}) {
  const http = createServer();
  const counts = { requests: 0, sockets: 0 };
  http.on("request", () => counts.requests++);
  http.on("upgrade", () => counts.requests++);
  const ioServer = new Server(http, opts);
  if (use) ioServer.use(use);
  ioServer.on("connection", (socket) => {
    counts.sockets++;
    socket.emit("welcome", { user: socket.handshake.headers["x-auth-user"] ?? null });
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return { http, ioServer, counts, port: http.address().port };
}

/**
 * Watches a client for QUIET_MS after its first connect_error: every connect_error,
 * every reconnection attempt, and whether it is still active at the end.
 */
async function watchRefusal(socket) {
  const errors = [];
  let attempts = 0;
  socket.on("connect_error", (err) => errors.push(err));
  socket.io.on("reconnect_attempt", () => attempts++);
  await once(socket, "connect_error", 10_000);
  await new Promise((r) => setTimeout(r, QUIET_MS));
  const result = { errors, attempts, active: socket.active, connected: socket.connected };
  socket.close();
  return result;
}

describe("reject_with = socketio", () => {
  let upstream, gw;
  before(async () => {
    upstream = await countingServer();
    gw = await startGateway({ upstreamPort: upstream.port, auth: 'reject_with = "socketio"' });
  });
  after(() => {
    upstream.ioServer.close();
  });

  test("a valid token still goes through to the upstream", async () => {
    const { socket, msg } = await connectAndWelcome(gw.url, { query: { token: mint(claimsFor("ada")) } });
    assert.deepEqual(msg, { user: "ada" });
    socket.close();
  });

  test("every transport and every refusal: connect_error once, inactive, no retry, upstream untouched", async () => {
    const before = { ...upstream.counts };
    const cases = [
      ["missing token", {}, "missing_token", "no token was presented"],
      ["expired token", { query: { token: mint(claimsFor("alice", -60)) } }, "token_expired", null],
      ["badly signed token", { query: { token: mint(claimsFor("mallory"), "x".repeat(40)) } }, "invalid_signature", null],
    ];
    const runs = [];
    for (const transports of [["polling"], ["websocket"], undefined]) {
      for (const [name, opts, code, message] of cases) {
        // Reconnection stays on (the default): the refusal itself must stop it.
        const socket = io(gw.url, { ...(transports ? { transports } : {}), ...opts });
        const label = `${transports ? transports[0] : "default"}, ${name}`;
        runs.push(watchRefusal(socket).then((r) => ({ label, code, message, ...r })));
      }
    }
    for (const r of await Promise.all(runs)) {
      assert.equal(r.errors.length, 1, `${r.label}: ${r.errors.map((e) => e.message)}`);
      const [err] = r.errors;
      assert.equal(err.data?.error, r.code, `${r.label}: ${JSON.stringify(err.data)} ${err.message}`);
      assert.ok(err.message.length > 0 && !/xhr|websocket error/.test(err.message), `${r.label}: ${err.message}`);
      if (r.message) assert.equal(err.message, r.message, r.label);
      assert.equal(r.active, false, `${r.label}: still active`);
      assert.equal(r.attempts, 0, `${r.label}: ${r.attempts} reconnection attempts`);
      assert.equal(r.connected, false, r.label);
    }
    assert.deepEqual(upstream.counts, before, "the upstream saw none of the refused clients");
  });

  test("a namespace other than / gets its own CONNECT_ERROR", async () => {
    const socket = io(`${gw.url}/admin`, { reconnection: false, forceNew: true });
    const err = await once(socket, "connect_error");
    socket.close();
    assert.equal(err.message, "no token was presented");
    assert.equal(err.data.error, "missing_token");
  });

  test("EIO=3 and non-Engine.IO requests keep the HTTP 401", async () => {
    for (const target of ["/socket.io/?EIO=3&transport=polling", "/socket.io/", "/socket.io/?EIO=4"]) {
      const resp = await fetch(gw.url + target);
      assert.equal(resp.status, 401, target);
      assert.equal((await resp.json()).error, "missing_token", target);
    }
  });
});

describe("an established session whose token expires", () => {
  test("gets an Engine.IO close and reconnects with a fresh token", async () => {
    const upstream = await countingServer(undefined, { pingInterval: 1000, pingTimeout: 1000 });
    const gw = await startGateway({ upstreamPort: upstream.port, auth: 'reject_with = "socketio"' });
    try {
      const tokens = [mint(claimsFor("ada", 3)), mint(claimsFor("ada", 300))];
      const socket = io(gw.url, { transports: ["polling"], query: { token: tokens[0] }, reconnectionDelay: 100 });
      // The client's own reconnect handler brings the fresh token, as the demo page does.
      socket.io.on("reconnect_attempt", () => {
        socket.io.opts.query = { token: tokens[1] };
      });
      const errors = [];
      socket.on("connect_error", (err) => errors.push(err.message));
      try {
        await once(socket, "connect");
        const firstSid = socket.io.engine.id;
        // The poll gets the Engine.IO close ("transport close"), unless the client's
        // concurrent POST (a pong) gets the gateway's 400 first ("transport error").
        const [reason] = await once(socket, "disconnect", 10_000);
        assert.ok(["transport close", "transport error"].includes(reason), reason);
        await once(socket, "connect", 10_000);
        assert.notEqual(socket.io.engine.id, firstSid, "a new session");
        assert.deepEqual(errors, [], "no refusal on the way");
        assert.equal(upstream.counts.sockets, 2);
      } finally {
        socket.close();
      }
    } finally {
      upstream.ioServer.close();
    }
  });
});

// The client of the original article, unchanged apart from the URL: socket.io 1.x
// clients got middleware errors as "error"; 4.x clients get them as connect_error.
const ARTICLE_CLIENT = `
            socket = io('URL', {
                query: 'token=' + jwt
            });
 
            socket.on('connect', function () {
                console.log("connected!");
            });
 
            socket.on('error', function (err) {
                console.log(err);
            });
`;

function articleClient(url, jwt) {
  const logged = [];
  const console = { log: (...args) => logged.push(args) };
  const run = new Function("io", "jwt", "console", `var socket;${ARTICLE_CLIENT.replace("URL", url)}return socket;`);
  return { socket: run(io, jwt, console), logged };
}

describe("the original article's client", () => {
  test("gets connect_error from the gateway exactly as from its Node middleware", async () => {
    const secret = "x".repeat(40);
    // The article's server: jwt.verify in io.use(), next(new Error("not valid token")).
    const direct = await countingServer((socket, next) => {
      if (socket.handshake.query.token !== "a-valid-token") return next(new Error("not valid token"));
      next();
    });
    const plain = await countingServer();
    const gw = await startGateway({ upstreamPort: plain.port, auth: 'reject_with = "socketio"' });
    try {
      const badToken = mint(claimsFor("gonzalo"), secret);
      const fromNode = articleClient(`http://127.0.0.1:${direct.port}`, badToken);
      const fromGateway = articleClient(gw.url, badToken);
      const [node, gateway] = await Promise.all([watchRefusal(fromNode.socket), watchRefusal(fromGateway.socket)]);
      assert.equal(node.errors.length, 1);
      assert.equal(node.errors[0].message, "not valid token");
      assert.equal(gateway.errors.length, 1);
      assert.equal(gateway.errors[0].message, "the token signature is invalid");
      assert.equal(gateway.errors[0].data.error, "invalid_signature");
      for (const r of [node, gateway]) {
        assert.equal(r.active, false);
        assert.equal(r.attempts, 0);
      }
      assert.deepEqual(fromGateway.logged, fromNode.logged, "the article's handlers saw the same");
      assert.equal(plain.counts.requests, 0, "the server behind the gateway saw nothing");

      // And a valid token connects through the gateway with the same code.
      const good = articleClient(gw.url, mint(claimsFor("gonzalo")));
      await once(good.socket, "connect");
      assert.deepEqual(good.logged, [["connected!"]]);
      good.socket.close();
    } finally {
      direct.ioServer.close();
      plain.ioServer.close();
    }
  });
});
