// The demo page in a real headless Chromium (Debian's package, driven by playwright-core):
// sign in through the form, see the live socket greet the user through the gateway, then
// restart upstream-demo and watch the page reconnect by itself with a fresh token; with
// reject_with = "socketio", a session outlives its short-lived tokens and a refusal's
// reason is shown on the page. Tokens govern live sessions (docs/demo.md): a page keeps
// one Engine.IO session across many token lifetimes by refreshing in place, and "Sign
// out everywhere" closes the user's page on the other gateway of a cluster (and, on one
// machine, through the revocation file) without a reconnect loop.
// The screenshots are kept as artifacts (tests/js/artifacts/); UPDATE_SCREENSHOT=1
// also copies the first one to docs/screenshot.png, which the README shows.

import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { chromium } from "playwright-core";
import { makeCerts, repoRoot, scratch, startDemo, startGateway, startRedis, stopAll } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const artifacts = path.join(repoRoot, "tests", "js", "artifacts");

after(stopAll);

function chromiumOrSkip(t) {
  if (existsSync(CHROMIUM)) return true;
  const why = `${CHROMIUM} is missing: apt-get install -y chromium`;
  if (process.env.CI === "true") throw new Error(why);
  t.skip(why);
  return false;
}

/** Headless Chromium; `spki` (base64 SHA-256 of a test key's SubjectPublicKeyInfo) is
 * the one certificate key it accepts without a trusted root (docs/tls.md): every other
 * certificate error still fails. */
function launchChromium({ spki } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...(spki ? [`--ignore-certificate-errors-spki-list=${spki}`] : []),
    ],
  });
}

async function signIn(page, base) {
  await page.goto(`${base}/login`);
  await page.fill("#username", "gonzalo");
  await page.fill("#password", "password");
  await Promise.all([page.waitForURL(`${base}/private`), page.click("#submit")]);
}

const welcomes = (page) => page.getAttribute("#welcome", "data-count").then(Number);

test("sign in, live welcome through the gateway, reconnect after an upstream restart", async (t) => {
  if (!chromiumOrSkip(t)) return;
  mkdirSync(artifacts, { recursive: true });
  // Short-lived tokens: every token the page held before the restart has expired by the
  // time upstream-demo is back, so reconnecting proves the page fetched a fresh one.
  const ttl = 4;
  const demo = await startDemo({ tokenTtl: `${ttl}s` });
  const gw = await startGateway({ upstreamPort: demo.port });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    await signIn(page, gw.url);

    await page.waitForFunction(() => Number(document.getElementById("welcome").dataset.count) >= 1, null, { timeout: 15_000 });
    assert.equal(await page.textContent("#welcome"), "Server says: welcome gonzalo");
    assert.equal(await page.textContent("#status"), "connected");
    await page.fill("#echo-text", "hello through the gateway");
    await page.press("#echo-text", "Enter");
    await page.waitForFunction(() => document.getElementById("log").textContent.includes("echo: hello through the gateway"));
    const shot = path.join(artifacts, "private-page.png");
    await page.screenshot({ path: shot });
    if (process.env.UPDATE_SCREENSHOT === "1") {
      copyFileSync(shot, path.join(repoRoot, "docs", "screenshot.png"));
    }

    // Restart upstream-demo (same port, same session store) after every token the page
    // holds has expired: the page reconnects by itself, with a token fetched after the
    // restart.
    const tokenFetches = [];
    page.on("response", (r) => r.url().endsWith("/getIoConnectionToken") && r.status() === 200 && tokenFetches.push(Date.now()));
    await demo.proc.stop("SIGKILL");
    const downAt = Date.now();
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("disconnected"));
    const welcomesBefore = Number(await page.getAttribute("#welcome", "data-count"));
    await new Promise((r) => setTimeout(r, ttl * 1000 + 500 - (Date.now() - downAt)));
    const restartedAt = Date.now();
    await startDemo({ dir: demo.dir, port: demo.port, tokenTtl: `${ttl}s` });
    await page.waitForFunction(
      (n) => Number(document.getElementById("welcome").dataset.count) > n,
      welcomesBefore,
      { timeout: 20_000 },
    );
    assert.equal(await page.textContent("#status"), "connected");
    assert.ok(tokenFetches.some((at) => at >= restartedAt), "a token was fetched after the restart");
    assert.equal(await page.textContent("#welcome"), "Server says: welcome gonzalo");
    await page.screenshot({ path: path.join(artifacts, "private-page-after-restart.png") });
  } finally {
    await browser.close();
  }
});

test("reject_with = socketio: a session outlives its tokens, and a refusal's reason is shown", async (t) => {
  if (!chromiumOrSkip(t)) return;
  mkdirSync(artifacts, { recursive: true });
  // Tokens live 3 s; the gateway closes a WebSocket when its token expires, so staying
  // connected for 12 s takes a fresh token before each exp: refreshed in place (or, with a
  // gateway that does not refresh, a reconnect with it).
  const demo = await startDemo({ tokenTtl: "3s", pingInterval: "1s" });
  const gw = await startGateway({ upstreamPort: demo.port, auth: 'reject_with = "socketio"' });
  // A gateway that refuses every token the demo mints (it wants another audience).
  const strict = await startGateway({
    upstreamPort: demo.port,
    auth: 'reject_with = "socketio"',
    audience: "another-service",
  });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    await signIn(page, gw.url);
    await page.waitForFunction(() => Number(document.getElementById("welcome").dataset.count) >= 1, null, { timeout: 15_000 });
    await new Promise((r) => setTimeout(r, 12_000)); // four token lifetimes
    await page.waitForFunction(() => document.getElementById("status").textContent === "connected", null, { timeout: 10_000 });
    await page.fill("#echo-text", "still here");
    await page.press("#echo-text", "Enter");
    await page.waitForFunction(() => document.getElementById("log").textContent.includes("echo: still here"), null, { timeout: 10_000 });
    const log = await page.textContent("#log");
    assert.ok(!log.includes("connect_error"), `no refusal on the way:\n${log}`);

    const refused = await browser.newPage({ viewport: { width: 900, height: 640 } });
    await signIn(refused, strict.url);
    await refused.waitForFunction(() => document.getElementById("reason").textContent !== "", null, { timeout: 15_000 });
    assert.equal(
      await refused.textContent("#reason"),
      "Connection refused: the token audience is not accepted (invalid_audience)",
    );
    assert.equal(await refused.textContent("#status"), "refused");
    await new Promise((r) => setTimeout(r, 3_000));
    const refusedLog = await refused.textContent("#log");
    assert.ok(!refusedLog.includes("reconnect attempt"), `no retries:\n${refusedLog}`);
    assert.equal(await welcomes(refused), 0);
    await refused.screenshot({ path: path.join(artifacts, "private-page-refused.png") });
  } finally {
    await browser.close();
  }
});

test("over HTTPS: the page through the gateway, polling over HTTP/2, the socket over WSS", async (t) => {
  if (!chromiumOrSkip(t)) return;
  mkdirSync(artifacts, { recursive: true });
  const certs = await makeCerts();
  const demo = await startDemo();
  const gw = await startGateway({ upstreamPort: demo.port, tls: certs.server });
  const browser = await launchChromium({ spki: certs.server.spki });
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    await signIn(page, gw.url);
    await page.waitForFunction(() => Number(document.getElementById("welcome").dataset.count) >= 1, null, { timeout: 15_000 });
    assert.equal(await page.textContent("#welcome"), "Server says: welcome gonzalo");
    await page.fill("#echo-text", "over TLS");
    await page.press("#echo-text", "Enter");
    await page.waitForFunction(() => document.getElementById("log").textContent.includes("echo: over TLS"));
    const polls = await page.evaluate(() =>
      performance.getEntriesByType("resource")
        .filter((e) => e.name.includes("/socket.io/?") && e.name.includes("transport=polling"))
        .map((e) => e.nextHopProtocol),
    );
    assert.ok(polls.length > 0, "no polling request was made");
    assert.ok(polls.every((p) => p === "h2"), `polling protocols: ${polls}`);
    assert.ok(sockets.some((u) => u.startsWith(`wss://127.0.0.1:${gw.port}/socket.io/`)), `websockets: ${sockets}`);
    await page.screenshot({ path: path.join(artifacts, "private-page-https.png") });

    // The same browser with a certificate it was not told about: refused.
    const other = await launchChromium({ spki: certs.renewed.spki });
    try {
      const refused = await other.newPage();
      await assert.rejects(refused.goto(`${gw.url}/login`), /ERR_CERT/);
    } finally {
      await other.close();
    }
  } finally {
    await browser.close();
  }
});

/** Counts the Engine.IO handshakes a page makes (a polling request without `sid`). */
function countHandshakes(page) {
  const seen = { handshakes: 0, closes: [] };
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.pathname === "/socket.io/" && url.searchParams.get("transport") === "polling" && !url.searchParams.has("sid")) {
      seen.handshakes += 1;
    }
  });
  page.on("websocket", (ws) => ws.on("close", () => seen.closes.push(Date.now())));
  return seen;
}

const waitWelcome = (page) =>
  page.waitForFunction(() => Number(document.getElementById("welcome").dataset.count) >= 1, null, { timeout: 15_000 });

/** `page` shows it is signed out, and stays so for 3 s without a new handshake. */
async function staysSignedOut(page, seen) {
  await page.waitForFunction(() => document.getElementById("status").textContent === "signed out", null, { timeout: 5_000 });
  const before = { handshakes: seen.handshakes, opens: await page.evaluate(() => window.demoStats.opens) };
  await new Promise((r) => setTimeout(r, 3_000)); // room for a reconnect loop to show
  assert.equal(seen.handshakes, before.handshakes, "a handshake after the sign-out");
  assert.equal(await page.evaluate(() => window.demoStats.opens), before.opens, "the page reopened a session");
  assert.equal(await page.textContent("#status"), "signed out");
  assert.equal(await page.evaluate(() => window.demoSocket.connected), false);
  const log = await page.textContent("#log");
  assert.ok(!log.includes("reconnect attempt"), `a reconnect after the sign-out:\n${log}`);
}

/** Signs out everywhere from `page` (the button) and resolves with the click's time. */
async function signOutEverywhere(page, base) {
  const at = Date.now();
  await Promise.all([page.waitForURL(`${base}/`), page.click("#signout-everywhere-button")]);
  return at;
}

test("a page with 5 s tokens stays on one Engine.IO session for 30 s, refreshing in place", async (t) => {
  if (!chromiumOrSkip(t)) return;
  mkdirSync(artifacts, { recursive: true });
  const demo = await startDemo({ tokenTtl: "5s" });
  const gw = await startGateway({ upstreamPort: demo.port, auth: 'reject_with = "socketio"\nclose_on_expiry = true' });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    const seen = countHandshakes(page);
    await signIn(page, gw.url);
    await waitWelcome(page);
    await page.waitForFunction(() => window.demoSocket.io.engine.transport.name === "websocket", null, { timeout: 10_000 });
    const sid = await page.evaluate(() => window.demoSocket.io.engine.id);
    const firstExp = Number(await page.getAttribute("#expires", "data-exp"));
    await new Promise((r) => setTimeout(r, 30_000)); // six token lifetimes
    const log = await page.textContent("#log");
    assert.equal(await page.evaluate(() => window.demoSocket.io.engine.id), sid, `another Engine.IO session:\n${log}`);
    assert.equal(await page.textContent("#status"), "connected", log);
    assert.equal(seen.handshakes, 1, `handshakes:\n${log}`);
    assert.equal(seen.closes.length, 0, `a WebSocket closed:\n${log}`);
    assert.equal(await welcomes(page), 1, log);
    const stats = await page.evaluate(() => window.demoStats);
    assert.ok(stats.refreshes >= 5, `refreshes: ${stats.refreshes}\n${log}`);
    assert.ok(Number(await page.getAttribute("#expires", "data-exp")) >= firstExp + 25, "the shown expiry did not move");
    await page.fill("#echo-text", "after six lifetimes");
    await page.press("#echo-text", "Enter");
    await page.waitForFunction(() => document.getElementById("log").textContent.includes("echo: after six lifetimes"), null, { timeout: 5_000 });
    await page.screenshot({ path: path.join(artifacts, "private-page-refreshed.png") });
  } finally {
    await browser.close();
  }
});

test("cluster: signing out on one gateway closes the user's page on the other within a second, no reconnect loop", async (t) => {
  if (!chromiumOrSkip(t)) return;
  mkdirSync(artifacts, { recursive: true });
  // As ./demo --cluster: Redis, upstream-demo instances sharing it, two gateways with
  // [cluster] on the same Redis; /logout revokes through the stream.
  const redis = await startRedis();
  const demos = [];
  for (let i = 0; i < 2; i++) demos.push(await startDemo({ redisUrl: redis.url }));
  const gateways = [];
  for (let i = 0; i < 2; i++) {
    gateways.push(await startGateway({
      upstreamPorts: demos.map((d) => d.port),
      upstream: 'sticky = "token"',
      auth: 'reject_with = "socketio"',
      sections: `[cluster]\nredis_url = "${redis.url}"\nkey_prefix = "socketio-gateway:"\n`,
    }));
  }
  const browser = await launchChromium();
  try {
    // Two devices of the same user: two browser contexts, two web sessions.
    const here = await (await browser.newContext()).newPage({ viewport: { width: 900, height: 640 } });
    const there = await (await browser.newContext()).newPage({ viewport: { width: 900, height: 640 } });
    const seen = countHandshakes(there);
    await signIn(here, gateways[0].url);
    await signIn(there, gateways[1].url);
    await waitWelcome(here);
    await waitWelcome(there);
    await there.waitForFunction(() => window.demoSocket.io.engine.transport.name === "websocket", null, { timeout: 10_000 });

    const clicked = await signOutEverywhere(here, gateways[0].url);
    await there.waitForFunction(() => window.demoStats.signedOut, null, { timeout: 5_000 });
    assert.equal(seen.closes.length, 1, "the other page's WebSocket was not closed");
    const ms = seen.closes[0] - clicked;
    // One second at the gateways, plus the sign-out request itself.
    assert.ok(ms < 1_500, `closed ${ms} ms after the click`);
    t.diagnostic(`the other page's socket closed ${ms} ms after "Sign out everywhere"`);
    await staysSignedOut(there, seen);
    assert.match(await there.textContent("#reason"), /Signed out everywhere/);
    await there.screenshot({ path: path.join(artifacts, "private-page-signed-out.png") });
    // Its web session (another browser's) ended too: a reload asks for the sign-in.
    await there.goto(`${gateways[1].url}/private`);
    assert.ok(there.url().endsWith("/login"), there.url());

    // Signing in again works at once: the revocation covers earlier tokens only.
    const again = await (await browser.newContext()).newPage();
    await signIn(again, gateways[1].url);
    await waitWelcome(again);
    assert.equal(await again.textContent("#status"), "connected");
  } finally {
    await browser.close();
  }
});

test("one machine: signing out writes the gateway's revocation file, and the user's other page is signed out", async (t) => {
  if (!chromiumOrSkip(t)) return;
  const file = path.join(scratch(), "revoked.json");
  writeFileSync(file, "[]\n");
  const demo = await startDemo({ revocationFile: file });
  const gw = await startGateway({
    upstreamPort: demo.port,
    auth: `reject_with = "socketio"\nrevocation_file = "${file}"`,
  });
  const browser = await launchChromium();
  try {
    const here = await (await browser.newContext()).newPage();
    const there = await (await browser.newContext()).newPage();
    const seen = countHandshakes(there);
    await signIn(here, gw.url);
    await signIn(there, gw.url);
    await waitWelcome(here);
    await waitWelcome(there);
    await there.waitForFunction(() => window.demoSocket.io.engine.transport.name === "websocket", null, { timeout: 10_000 });
    await signOutEverywhere(here, gw.url);
    const entries = JSON.parse(readFileSync(file, "utf8"));
    assert.equal(entries.length, 1, JSON.stringify(entries));
    assert.equal(entries[0].user, "gonzalo");
    // The gateway re-reads the file within a few seconds of the change.
    await there.waitForFunction(() => window.demoStats.signedOut, null, { timeout: 10_000 });
    assert.equal(seen.closes.length, 1, "the other page's WebSocket was not closed");
    await staysSignedOut(there, seen);
  } finally {
    await browser.close();
  }
});
