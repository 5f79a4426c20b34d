// TLS at the gateway (docs/tls.md) with the official socket.io client under Node: over
// https and wss with the test CA as the only trust root (polling, websocket-only and the
// upgrade), the usual refusal of a bad token, a client that does not trust the CA, a
// certificate rotated under a connected client, and a socket.io server the gateway
// reaches over TLS (its own CA; a wrong CA is 502).

import assert from "node:assert/strict";
import { readFileSync, renameSync, copyFileSync } from "node:fs";
import { createServer } from "node:https";
import tls from "node:tls";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { io } from "socket.io-client";
import {
  claimsFor, connectAndWelcome, echo, freePort, headerTrustingServer, makeCerts, mint, once, startDemo, startGateway, stopAll, upgraded,
} from "./harness.mjs";

let certs;
let ca;
before(async () => {
  certs = await makeCerts();
  ca = readFileSync(certs.ca);
});
after(stopAll);

/** The serial of the certificate a new TLS connection to `port` is served. */
function servedSerial(port, trust = ca) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: "127.0.0.1", port, ca: trust, servername: "localhost" }, () => {
      const serial = sock.getPeerCertificate().serialNumber.toLowerCase();
      sock.end();
      resolve(serial);
    });
    sock.once("error", reject);
  });
}

describe("the official client over https and wss", () => {
  let gw;
  before(async () => {
    const demo = await startDemo();
    gw = await startGateway({ upstreamPort: demo.port, tls: certs.server });
  });

  for (const [name, transports] of [
    ["polling only", ["polling"]],
    ["websocket only", ["websocket"]],
    ["polling upgraded to websocket", ["polling", "websocket"]],
  ]) {
    test(`${name}: welcome and echo with the test CA as the only root`, async () => {
      const { socket, msg } = await connectAndWelcome(gw.url, {
        query: { token: mint(claimsFor("gonzalo")) },
        transports,
        ca,
      });
      try {
        assert.deepEqual(msg, { user: "gonzalo" });
        if (transports.length === 2) await upgraded(socket);
        assert.equal(socket.io.engine.transport.name, transports.at(-1));
        assert.equal(await echo(socket, `over ${name}`), `over ${name}`);
      } finally {
        socket.close();
      }
    });
  }

  test("a bad token gets the usual refusal over TLS", async () => {
    for (const transports of [["polling"], ["websocket"]]) {
      const socket = io(gw.url, {
        query: { token: mint(claimsFor("eve"), "w".repeat(40)) },
        transports,
        ca,
        reconnection: false,
      });
      const err = await once(socket, "connect_error");
      socket.close();
      assert.ok(err instanceof Error);
      if (transports[0] === "polling") assert.equal(err.context?.status, 401);
    }
    assert.ok(!/token=[^\[&]/.test(gw.proc.logs()), "a token was logged");
  });

  test("a client that does not trust the test CA fails the handshake", async () => {
    // Node's own roots only: no HTTP answer on either transport.
    for (const [transports, message] of [[["polling"], "xhr poll error"], [["websocket"], "websocket error"]]) {
      const socket = io(gw.url, { query: { token: mint(claimsFor("gonzalo")) }, transports, reconnection: false });
      const err = await once(socket, "connect_error");
      socket.close();
      assert.equal(err.message, message);
    }
    // What the TLS layer says to a client trusting another CA.
    await assert.rejects(servedSerial(gw.port, readFileSync(certs.upstreamCa)), /certificate/i);
  });
});

test("rotation: a connected client stays, a new one sees the new serial", async () => {
  const demo = await startDemo();
  // The gateway reads its own copy, which the renewal replaces by renames.
  const live = { cert: path.join(certs.dir, "live.pem"), key: path.join(certs.dir, "live.key") };
  copyFileSync(certs.server.cert, live.cert);
  copyFileSync(certs.server.key, live.key);
  const gw = await startGateway({ upstreamPort: demo.port, tls: live });
  assert.equal(await servedSerial(gw.port), certs.server.serial);
  const { socket } = await connectAndWelcome(gw.url, {
    query: { token: mint(claimsFor("gonzalo")) },
    transports: ["websocket"],
    ca,
  });
  try {
    for (const [from, to] of [[certs.renewed.key, live.key], [certs.renewed.cert, live.cert]]) {
      copyFileSync(from, `${to}.new`);
      renameSync(`${to}.new`, to);
    }
    const deadline = Date.now() + 10_000;
    let serial;
    while ((serial = await servedSerial(gw.port)) !== certs.renewed.serial && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(serial, certs.renewed.serial, "the new certificate was not served within 10 s");
    assert.ok(socket.connected, "the client connected before the rotation was dropped");
    assert.equal(await echo(socket, "after the rotation"), "after the rotation");
    const { socket: fresh, msg } = await connectAndWelcome(gw.url, {
      query: { token: mint(claimsFor("gonzalo")) },
      ca,
    });
    assert.deepEqual(msg, { user: "gonzalo" });
    fresh.close();
  } finally {
    socket.close();
  }
});

describe("a socket.io server behind TLS", () => {
  let port;
  let ioServer;
  let reached = 0;
  before(async () => {
    const https = createServer({ cert: readFileSync(certs.upstream.cert), key: readFileSync(certs.upstream.key) });
    https.on("request", () => reached++);
    https.on("upgrade", () => reached++);
    ioServer = headerTrustingServer(https, (socket) => ({ secure: socket.handshake.secure }));
    await new Promise((r) => https.listen(0, "127.0.0.1", r));
    port = https.address().port;
  });
  after(() => ioServer.close());

  test("is reached over https and wss, health-checked over TLS", async () => {
    // Two servers, one of them down: only TLS health checks that pass keep the live
    // one in rotation, so every client below proves them.
    const down = await freePort();
    const gw = await startGateway({
      upstreamPorts: [port, down],
      upstream: `tls = true\nca_file = "${certs.upstreamCa}"\nsni = "localhost"\nhealth_check = "200ms"\nsticky = "token"`,
      tls: certs.server,
    });
    await new Promise((r) => setTimeout(r, 1_000));
    for (let i = 0; i < 6; i++) {
      for (const transports of [["polling"], ["websocket"], ["polling", "websocket"]]) {
        const { socket, msg } = await connectAndWelcome(gw.url, {
          query: { token: mint({ ...claimsFor(`user${i}`), jti: `j${i}` }) },
          transports,
          ca,
        });
        assert.deepEqual(msg, { user: `user${i}`, secure: true });
        if (transports.length === 2) await upgraded(socket);
        assert.equal(await echo(socket, i), i);
        socket.close();
      }
    }
  });

  test("a certificate that does not verify is 502, logged", async () => {
    const gw = await startGateway({
      upstreamPort: port,
      // The gateway's CA, not the one that issued the server's certificate.
      upstream: `tls = true\nca_file = "${certs.ca}"\nsni = "localhost"`,
    });
    const before = reached;
    const token = mint(claimsFor("gonzalo"));
    const resp = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling&token=${token}`);
    assert.equal(resp.status, 502);
    const ws = io(gw.url, { query: { token }, transports: ["websocket"], reconnection: false });
    await once(ws, "connect_error");
    ws.close();
    assert.equal(reached, before, "a request reached a server whose certificate did not verify");
    const logs = gw.proc.logs();
    assert.match(logs, /UnknownIssuer|certificate/i);
  });
});
