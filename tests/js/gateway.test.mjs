// The gateway with the official socket.io client (socket.io-client 4.x) under Node:
// every transport, rejections, the upstream-restart scenario of the original article,
// and the drop-in claim with an existing Node socket.io server that has no JWT code.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";
import { Server } from "socket.io";
import { io } from "socket.io-client";
import {
  claimsFor, connectAndWelcome, echo, fetchToken, headerTrustingServer, login, mint, once, startDemo, startGateway, stopAll,
  upgraded,
} from "./harness.mjs";

after(stopAll);

describe("through the gateway to upstream-demo", () => {
  let demo, gw, cookie;
  before(async () => {
    demo = await startDemo();
    gw = await startGateway({ upstreamPort: demo.port });
    cookie = await login(gw.url);
  });

  for (const [name, transports] of [
    ["polling only", ["polling"]],
    ["websocket only", ["websocket"]],
  ]) {
    test(`${name}: welcome with the user, echo acknowledged`, async () => {
      const token = await fetchToken(gw.url, cookie);
      const { socket, msg } = await connectAndWelcome(gw.url, { transports, query: { token } });
      try {
        assert.deepEqual(msg, { user: "gonzalo" });
        assert.equal(socket.io.engine.transport.name, transports[0]);
        assert.deepEqual(await echo(socket, { n: 1, text: "hé" }), { n: 1, text: "hé" });
      } finally {
        socket.close();
      }
    });
  }

  test("default transports: polling first, then the upgrade to websocket", async () => {
    const token = await fetchToken(gw.url, cookie);
    const { socket, msg } = await connectAndWelcome(gw.url, { query: { token } });
    try {
      assert.deepEqual(msg, { user: "gonzalo" });
      if (socket.io.engine.transport.name !== "websocket") {
        await once(socket.io.engine, "upgrade");
      }
      assert.equal(socket.io.engine.transport.name, "websocket");
      assert.deepEqual(await echo(socket, ["after", "upgrade"]), ["after", "upgrade"]);
    } finally {
      socket.close();
    }
  });

  test("the token in an Authorization header (extraHeaders) works too", async () => {
    const token = await fetchToken(gw.url, cookie);
    const { socket, msg } = await connectAndWelcome(gw.url, {
      transports: ["polling"],
      extraHeaders: { Authorization: `Bearer ${token}` },
    });
    socket.close();
    assert.deepEqual(msg, { user: "gonzalo" });
  });
});

describe("rejections never reach the upstream", () => {
  let upstreamRequests = 0;
  let upstreamSockets = 0;
  let http, gw;
  before(async () => {
    http = createServer();
    http.on("request", () => upstreamRequests++);
    http.on("upgrade", () => upstreamRequests++);
    const ioServer = new Server(http);
    ioServer.on("connection", () => upstreamSockets++);
    await new Promise((r) => http.listen(0, "127.0.0.1", r));
    gw = await startGateway({ upstreamPort: http.address().port });
  });
  after(() => new Promise((r) => http.close(r)));

  const cases = [
    ["missing token", {}],
    ["badly signed token", { query: { token: mint(claimsFor("mallory"), "x".repeat(40)) } }],
    ["expired token", { query: { token: mint(claimsFor("alice", -60)) } }],
  ];
  for (const transports of [["polling"], ["websocket"]]) {
    for (const [name, opts] of cases) {
      test(`${transports[0]}, ${name}: connect_error, and the upstream saw nothing`, async () => {
        const socket = io(gw.url, { transports, reconnection: false, ...opts });
        const err = await once(socket, "connect_error");
        socket.close();
        assert.ok(err instanceof Error);
        assert.equal(upstreamRequests, 0);
        assert.equal(upstreamSockets, 0);
      });
    }
  }
});

describe("the original article's restart scenario", () => {
  test("a client fetching a fresh token reconnects after an upstream restart; a stale token is refused", async () => {
    const demo = await startDemo({ tokenTtl: "3s" });
    const gw = await startGateway({ upstreamPort: demo.port });
    const cookie = await login(gw.url);

    // The demo page's logic: a fresh token before every reconnect attempt.
    let fresh = await fetchToken(gw.url, cookie);
    const good = io(gw.url, { query: { token: fresh }, reconnectionDelay: 300, reconnectionDelayMax: 500 });
    good.io.on("reconnect_attempt", () => {
      good.io.opts.query = { token: fresh };
      fetchToken(gw.url, cookie).then((t) => (fresh = t), () => {});
    });
    good.on("disconnect", () => fetchToken(gw.url, cookie).then((t) => (fresh = t), () => {}));
    const goodWelcomes = [];
    good.on("welcome", (m) => goodWelcomes.push(m));

    // The article's client: keeps the token it was given.
    const stale = io(gw.url, {
      query: { token: await fetchToken(gw.url, cookie) },
      reconnectionDelay: 300,
      reconnectionDelayMax: 500,
    });
    const staleWelcomes = [];
    stale.on("welcome", (m) => staleWelcomes.push(m));

    try {
      await once(good, "welcome");
      if (staleWelcomes.length === 0) await once(stale, "welcome");
      await upgraded(good);
      await upgraded(stale);

      // Restart upstream-demo on the same port with the same session store, after the
      // stale token has expired.
      await demo.proc.stop("SIGKILL");
      await new Promise((r) => setTimeout(r, 3500));
      const staleErrors = [];
      stale.on("connect_error", (e) => staleErrors.push(e));
      const before = goodWelcomes.length;
      await startDemo({ dir: demo.dir, port: demo.port, tokenTtl: "3s" });

      const deadline = Date.now() + 10_000;
      while (goodWelcomes.length === before && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(goodWelcomes.length > before, "the fresh-token client got welcome again");
      assert.deepEqual(goodWelcomes.at(-1), { user: "gonzalo" });

      const errDeadline = Date.now() + 5_000;
      while (staleErrors.length === 0 && Date.now() < errDeadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(staleErrors.length > 0, "the stale client was refused");
      assert.equal(staleWelcomes.length, 1, "the stale client never got in again");
    } finally {
      good.close();
      stale.close();
    }
  });
});

describe("drop-in: an existing Node socket.io server without JWT code", () => {
  test("trusts x-auth-user from the gateway; refused clients never reach it", async () => {
    const http = createServer();
    let reached = 0;
    http.on("request", () => reached++);
    // The whole auth of this server: the header the gateway sets.
    const ioServer = headerTrustingServer(http, (socket) => ({ sawToken: "token" in socket.handshake.query }));
    await new Promise((r) => http.listen(0, "127.0.0.1", r));
    const gw = await startGateway({ upstreamPort: http.address().port });
    try {
      const { socket, msg } = await connectAndWelcome(gw.url, { query: { token: mint(claimsFor("ada")) } });
      assert.deepEqual(msg, { user: "ada", sawToken: false });
      assert.deepEqual(await echo(socket, "ping"), "ping");
      socket.close();

      const before = reached;
      const bad = io(gw.url, { reconnection: false, query: { token: mint(claimsFor("eve"), "y".repeat(40)) } });
      await once(bad, "connect_error");
      bad.close();
      assert.equal(reached, before, "a refused client never reached the server");
    } finally {
      ioServer.close();
    }
  });
});
