// The demo as a cluster (docs/clusters.md): a real
// `redis-server`, three upstream-demo instances sharing it through socket.io's Redis
// adapter, two gateways in front of all three, and official socket.io clients spread
// over both gateways and the three instances; signing out adds the user's revocation to the
// gateways' Redis stream.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, test } from "node:test";

import {
  claimsFor,
  connectAndWelcome,
  fetchToken,
  login,
  mint,
  once,
  startDemo,
  startGateway,
  startRedis,
  stopAll,
} from "./harness.mjs";

const HEALTH_CHECK = "300ms";
let redis;
let demos;
let gateways;
let victim;
const sockets = [];

/** Connects `user` through `gw` with a token of its own (tokens differ by `jti`, so
 * the sticky hash spreads the sockets over the instances). */
async function join(user, gw, n) {
  const token = mint({ ...claimsFor(user), jti: `${user}-${n}` });
  // The client's own reconnection brings it back when its instance goes away.
  const { socket } = await connectAndWelcome(gw.url, {
    query: { token },
    transports: ["websocket"],
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
  });
  const entry = { user, socket, broadcasts: [], whispers: [], disconnects: 0 };
  socket.on("broadcast", (m) => entry.broadcasts.push(m));
  socket.on("whisper", (m) => entry.whispers.push(m));
  socket.on("disconnect", () => entry.disconnects++);
  sockets.push(entry);
  return entry;
}

/** Waits until `check()` holds (or fails after `ms`). */
async function until(check, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

before(async () => {
  redis = await startRedis();
  demos = [];
  for (let i = 0; i < 3; i++) demos.push(await startDemo({ redisUrl: redis.url }));
  const upstream = `sticky = "token"\nhealth_check = "${HEALTH_CHECK}"`;
  gateways = [];
  for (let i = 0; i < 2; i++) {
    gateways.push(await startGateway({ upstreamPorts: demos.map((d) => d.port), upstream }));
  }
  let n = 0;
  for (const user of ["alice", "alice", "bob", "carol", "dave", "erin"]) {
    await join(user, gateways[n % 2], n);
    n++;
  }
});

after(async () => {
  // Reconnecting clients would keep Node running after the servers are gone.
  for (const s of sockets) s.socket.close();
  await stopAll();
});

test("the sockets are spread over the three instances", () => {
  const holders = demos.filter((d) => /socket connected/.test(d.proc.logs()));
  assert.ok(holders.length >= 2, "every socket on one instance");
});

test("a broadcast reaches every socket on every instance exactly once", async () => {
  const sender = sockets.find((s) => s.user === "bob");
  sender.socket.emit("broadcast", { text: "hello, cluster" });
  const all = await until(() => sockets.every((s) => s.broadcasts.length >= 1));
  assert.ok(all, `missing: ${sockets.filter((s) => !s.broadcasts.length).map((s) => s.user)}`);
  await new Promise((r) => setTimeout(r, 300)); // room for a duplicate to show up
  for (const s of sockets) {
    assert.deepEqual(s.broadcasts, [{ from: "bob", text: "hello, cluster" }], s.user);
  }
});

test("a whisper reaches every socket of its user and no one else", async () => {
  const sender = sockets.find((s) => s.user === "carol");
  sender.socket.emit("whisper", { to: "alice", text: "psst" });
  const alices = sockets.filter((s) => s.user === "alice");
  assert.equal(alices.length, 2);
  assert.ok(await until(() => alices.every((s) => s.whispers.length >= 1)), "an alice missed it");
  await new Promise((r) => setTimeout(r, 300));
  for (const s of sockets) {
    const expected = s.user === "alice" ? [{ from: "carol", text: "psst" }] : [];
    assert.deepEqual(s.whispers, expected, s.user);
  }
});

test("presence lists who is online across the cluster", async () => {
  const online = await sockets[0].socket.timeout(5_000).emitWithAck("presence");
  assert.deepEqual(online, ["alice", "bob", "carol", "dave", "erin"]);
});

test("a session signed in on one instance is accepted by the others", async () => {
  const cookie = await login(`http://127.0.0.1:${demos[0].port}`);
  for (const d of demos.slice(1)) {
    const token = await fetchToken(`http://127.0.0.1:${d.port}`, cookie);
    assert.equal(typeof token, "string");
    assert.equal(JSON.parse(Buffer.from(token.split(".")[1], "base64url")).sub, "gonzalo");
  }
});

test("signing out adds the user's revocation to the gateways' Redis stream and ends the user's other sessions", async () => {
  const base = `http://127.0.0.1:${demos[1].port}`;
  const elsewhere = await login(`http://127.0.0.1:${demos[0].port}`); // another browser
  const cookie = await login(base);
  const token = await fetchToken(base, cookie);
  const { iat } = JSON.parse(Buffer.from(token.split(".")[1], "base64url"));
  const resp = await fetch(`${base}/logout`, { headers: { Cookie: cookie }, redirect: "manual" });
  assert.equal(resp.status, 303);
  const answered = Math.floor(Date.now() / 1000);
  // redis-cli comes with Debian's redis-server (redis-tools).
  const out = execFileSync("redis-cli", ["-p", String(redis.port), "--json", "XRANGE", "socketio-gateway:revocations", "-", "+"], {
    encoding: "utf8",
  });
  const entries = JSON.parse(out);
  assert.equal(entries.length, 1, out);
  const [, fields] = entries[0];
  assert.equal(fields[0], "revoke", out);
  const entry = JSON.parse(fields[1]);
  assert.deepEqual(Object.keys(entry).sort(), ["issued_before", "user"], out);
  assert.equal(entry.user, "gonzalo");
  assert.ok(entry.issued_before > iat, `the token minted before sign-out (iat ${iat}) is not covered: ${out}`);
  assert.ok(entry.issued_before <= answered, `a token minted after the answer would be revoked: ${out}`);
  assert.equal((await fetch(`${base}/getIoConnectionToken`, { headers: { Cookie: cookie } })).status, 403);
  const other = await fetch(`http://127.0.0.1:${demos[2].port}/getIoConnectionToken`, { headers: { Cookie: elsewhere } });
  assert.equal(other.status, 403, "the other browser's session outlived the sign-out");
  // A sign-in after the sign-out works at once, on any instance.
  assert.equal(typeof (await fetchToken(`http://127.0.0.1:${demos[2].port}`, await login(base))), "string");
});

test("with one instance killed, its clients come back on the others and broadcasts arrive", async () => {
  // The instance holding the most sockets goes away.
  const counts = demos.map((d) => (d.proc.logs().match(/socket connected/g) ?? []).length);
  victim = demos[counts.indexOf(Math.max(...counts))];
  await victim.proc.stop();
  assert.ok(await until(() => sockets.some((s) => s.disconnects > 0)), "no socket was on the killed instance");
  // Reconnecting, they reach another instance once the gateways' health checks
  // (every 300 ms) have taken the dead one out.
  assert.ok(
    await until(() => sockets.every((s) => s.socket.connected), 15_000),
    `not back: ${sockets.filter((s) => !s.socket.connected).map((s) => s.user)}\n` +
      gateways.map((g) => g.proc.logs().split("\n").slice(-12).join("\n")).join("\n--\n"),
  );
  for (const s of sockets) s.broadcasts.length = 0;
  sockets[0].socket.emit("broadcast", { text: "after the failure" });
  assert.ok(
    await until(() => sockets.every((s) => s.broadcasts.length >= 1)),
    `missing after the failure: ${sockets.filter((s) => !s.broadcasts.length).map((s) => s.user)}`,
  );
  await new Promise((r) => setTimeout(r, 300));
  for (const s of sockets) {
    assert.deepEqual(s.broadcasts, [{ from: sockets[0].user, text: "after the failure" }], s.user);
  }
  assert.ok(demos.filter((d) => d !== victim).every((d) => d.proc.exitCode === null), "a surviving instance exited");
});

test("a restarted Redis: no instance crashes, and broadcasts resume", async () => {
  const port = redis.port;
  await redis.proc.stop();
  // Meanwhile local sockets keep working.
  const live = sockets.find((s) => s.socket.connected);
  assert.equal(await live.socket.timeout(5_000).emitWithAck("echo", "no redis"), "no redis");
  redis = await startRedis({ port });
  for (const s of sockets) s.broadcasts.length = 0;
  // The adapters resubscribe on their own; a broadcast sent before that is lost, so
  // the sender repeats until one gets through, as a chat user would.
  const sender = sockets[0].socket;
  let delivered = false;
  for (let attempt = 0; attempt < 40 && !delivered; attempt++) {
    sender.emit("broadcast", { text: "redis is back" });
    delivered = await until(() => sockets.every((s) => s.broadcasts.length >= 1), 500);
  }
  assert.ok(delivered, "not every socket got a broadcast after Redis came back");
  assert.ok(demos.filter((d) => d !== victim).every((d) => d.proc.exitCode === null), "an instance crashed");
});
