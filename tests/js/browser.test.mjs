// The demo page in a real headless Chromium (Debian's package, driven by playwright-core):
// sign in through the form, see the live socket greet the user through the gateway, then
// restart upstream-demo and watch the page reconnect by itself with a fresh token; with
// reject_with = "socketio", a session outlives its short-lived tokens and a refusal's
// reason is shown on the page.
// The screenshots are kept as artifacts (tests/js/artifacts/); UPDATE_SCREENSHOT=1
// also copies the first one to docs/screenshot.png, which the README shows.

import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { chromium } from "playwright-core";
import { makeCerts, repoRoot, startDemo, startGateway, stopAll } from "./harness.mjs";

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
  // connected for 12 s takes several reconnects, each with a fresh token.
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
    await page.waitForFunction(() => Number(document.getElementById("welcome").dataset.count) >= 4, null, { timeout: 20_000 });
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
