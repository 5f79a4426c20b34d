// Test harness for the client suites: starts the real `proxy` and `upstream-demo`
// binaries (built by `cargo build --release`) on ephemeral 127.0.0.1 ports, waits until
// they serve, signs in like a browser, and stops every process it started.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Server } from "socket.io";
import { io } from "socket.io-client";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "../..");
const binDir = path.join(repoRoot, "target", "release");

/** The HS256 secret every test process shares (>= 32 bytes). */
export const SECRET = "js-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";

/** argon2id hash of "password" (made with `upstream-demo --hash-password`). */
const GONZALO_HASH =
  "$argon2id$v=19$m=19456,t=2,p=1$uK6VK6Mjuq/PI04r+cJdhA$L9y8wJ+/mc6r/gNNVFuy3U+Vw+ezd0WLVx0eDkVe268";

const READY_MS = 20_000;
const started = new Set();

function bin(name) {
  const p = path.join(binDir, name);
  if (!existsSync(p)) {
    throw new Error(`${p} is missing: run cargo build --release --workspace first`);
  }
  return p;
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function waitListening(port, proc) {
  const deadline = Date.now() + READY_MS;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const sock = net.connect(port, "127.0.0.1");
      sock.once("connect", () => {
        sock.destroy();
        resolve();
      });
      sock.once("error", () => {
        sock.destroy();
        if (proc.exitCode !== null || Date.now() > deadline) {
          reject(new Error(`${proc.name} never listened on ${port}:\n${proc.logs()}`));
        } else {
          setTimeout(attempt, 20);
        }
      });
    };
    attempt();
  });
}

function launch(name, args, env = {}) {
  return launchProgram(name, bin(name), args, env);
}

function launchProgram(name, program, args, env = {}) {
  const child = spawn(program, args, {
    env: { ...process.env, JWT_SECRET: SECRET, RUST_LOG: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  // A missing program is reported by the readiness wait, with this in the logs.
  child.on("error", (e) => (out += `cannot start ${program}: ${e.message}\n`));
  const proc = {
    name,
    child,
    get exitCode() {
      return child.exitCode;
    },
    logs: () => out,
    async stop(signal = "SIGKILL") {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill(signal);
      await exited;
      started.delete(proc);
    },
  };
  started.add(proc);
  return proc;
}

/** Kills everything still running (call from `after`). */
export async function stopAll() {
  await Promise.all([...started].map((p) => p.stop()));
}
process.on("exit", () => {
  for (const p of started) p.child.kill("SIGKILL");
});

/** A scratch directory for config files and the session database. */
export function scratch() {
  return mkdtempSync(path.join(tmpdir(), "gateway-js-"));
}

/**
 * Starts upstream-demo. `dir` holds its config and session database, so that a
 * restart with the same `dir` and `port` keeps signed-in sessions.
 */
export async function startDemo({ dir = scratch(), port = 0, tokenTtl = "60s", pingInterval = "25s", redisUrl = "", revocationFile = "" } = {}) {
  const file = path.join(dir, "demo.toml");
  writeFileSync(
    file,
    `[demo]
${redisUrl ? `redis_url = "${redisUrl}"` : ""}
${revocationFile ? `revocation_file = "${revocationFile}"` : ""}
listen = "127.0.0.1:${port}"
token_ttl = "${tokenTtl}"
ping_interval = "${pingInterval}"
session_db = "sessions.sqlite3"
users = [{ name = "gonzalo", password_hash = "${GONZALO_HASH}" }]

[auth]
algorithms = ["HS256"]
secret_env = "JWT_SECRET"
issuer = "upstream-demo"
audience = "socket.io"
`,
  );
  const proc = launch("upstream-demo", ["--config", file]);
  const deadline = Date.now() + READY_MS;
  let match;
  while (!(match = proc.logs().match(/listening on 127\.0\.0\.1:(\d+)/))) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      throw new Error(`upstream-demo did not start:\n${proc.logs()}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return { proc, dir, port: Number(match[1]) };
}

/**
 * Starts Debian's `redis-server` on a free port, without persistence. Throws when it is
 * not installed (tests/run and .ci/run check or install it first).
 */
export async function startRedis({ port } = {}) {
  port ??= await freePort();
  const proc = launchProgram("redis-server", "redis-server", [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
  ]);
  await waitListening(port, proc);
  return { proc, port, url: `redis://127.0.0.1:${port}` };
}

/**
 * Writes a test PKI with the `testcerts` tool (rcgen, docs/tls.md) into a scratch
 * directory: the gateway's CA and two leaves (`server`, `renewed`), and another CA with
 * a leaf for TLS upstreams. Resolves with the paths, serials and SPKI hashes.
 */
export async function makeCerts() {
  const dir = scratch();
  const proc = launch("testcerts", [dir]);
  const code = await new Promise((r) => proc.child.once("close", r));
  if (code !== 0) throw new Error(`testcerts failed:\n${proc.logs()}`);
  started.delete(proc);
  return { dir, ...JSON.parse(proc.logs()) };
}

/** Starts the gateway in front of `upstreamPort` (or all of `upstreamPorts`); `auth`
 * adds `[auth]` lines, `upstream` adds `[upstream]` lines, `tls` (`{ cert, key }`)
 * serves HTTPS and WSS, `sections` is appended as it is (further tables such as
 * `[cluster]`). `reject_with = "http"` unless `auth` chooses: the tests of
 * HTTP refusals predate `"socketio"` becoming the default. */
export async function startGateway({ upstreamPort, upstreamPorts, upstream = "", auth = "", audience = "socket.io", tls, sections = "" }) {
  const dir = scratch();
  const port = await freePort();
  const file = path.join(dir, "gateway.toml");
  writeFileSync(
    file,
    `[proxy]
listen = "127.0.0.1:${port}"
threads = 2
shutdown_grace = "1s"

[upstream]
servers = [${(upstreamPorts ?? [upstreamPort]).map((p) => `"127.0.0.1:${p}"`).join(", ")}]
${upstream}

[auth]
algorithms = ["HS256"]
secret_env = "JWT_SECRET"
issuer = "upstream-demo"
audience = "${audience}"
leeway = "0s"
${/reject_with/.test(auth) ? "" : 'reject_with = "http"'}
${auth}
${tls ? `[proxy.tls]\ncert_file = "${tls.cert}"\nkey_file = "${tls.key}"\n` : ""}
${sections}
`,
  );
  const proc = launch("proxy", ["--config", file]);
  await waitListening(port, proc);
  return { proc, port, url: `${tls ? "https" : "http"}://127.0.0.1:${port}` };
}

/** Signs in with HTTP Basic, as the original app's users did; returns the cookie. */
export async function login(base, user = "gonzalo", password = "password") {
  const resp = await fetch(`${base}/login`, {
    headers: { Authorization: "Basic " + Buffer.from(`${user}:${password}`).toString("base64") },
    redirect: "manual",
  });
  if (resp.status !== 303) throw new Error(`login failed: ${resp.status}`);
  const cookie = resp.headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
  if (!cookie) throw new Error("login set no cookie");
  return cookie;
}

/** A fresh token from the demo's token endpoint. */
export async function fetchToken(base, cookie) {
  const resp = await fetch(`${base}/getIoConnectionToken`, { headers: { Cookie: cookie } });
  if (resp.status !== 200) throw new Error(`token endpoint: ${resp.status}`);
  return resp.json();
}

/** An HS256 token signed in JavaScript with the shared secret. */
export function mint(claims, secret = SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Claims the test gateways accept, valid for `ttl` seconds. */
export function claimsFor(user, ttl = 300) {
  const now = Math.floor(Date.now() / 1000);
  return { sub: user, iss: "upstream-demo", aud: "socket.io", iat: now, exp: now + ttl };
}

/** Resolves with the first `event` emitted by `emitter`, or rejects after `ms`. */
export function once(emitter, event, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

/** Connects the official client; resolves with the socket once `welcome` arrived. */
export function connectAndWelcome(url, opts) {
  const socket = io(url, { reconnection: false, ...opts });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error("no welcome within 10 s"));
    }, 10_000);
    // Both listeners go once one fired: a later connect_error of a client that
    // reconnects by itself is its own business, not a failed first connect.
    const onError = (err) => {
      clearTimeout(timer);
      socket.off("welcome", onWelcome);
      socket.close();
      reject(new Error(`connect_error: ${err.message}`));
    };
    const onWelcome = (msg) => {
      clearTimeout(timer);
      socket.off("connect_error", onError);
      resolve({ socket, msg });
    };
    socket.once("welcome", onWelcome);
    socket.once("connect_error", onError);
  });
}

/**
 * Resolves once the client's Engine.IO connection has finished its upgrade to WebSocket.
 * Tests that kill a server wait for this first: engine.io-client 6 leaves its polling
 * transport paused for good when the WebSocket probe fails after its `pong` (the
 * client's `probe()` returns early once `failed` is set and never resumes polling), so
 * a server killed inside that window of a few milliseconds leaves the client silent
 * until its ping timeout (50 s with upstream-demo's defaults), with or without a
 * gateway in between.
 */
export async function upgraded(socket, ms = 10_000) {
  const engine = socket.io.engine;
  if (engine.transport.name !== "websocket") await once(engine, "upgrade", ms);
}

/**
 * A socket.io server on `httpServer` (http or https) whose whole authentication is the
 * header the gateway sets: a connection without `x-auth-user` is refused, `welcome`
 * carries the user and whatever `extra(socket)` adds, `echo` acknowledges its payload.
 */
export function headerTrustingServer(httpServer, extra = () => ({})) {
  const ioServer = new Server(httpServer);
  ioServer.use((socket, next) => {
    const user = socket.handshake.headers["x-auth-user"];
    if (!user) return next(new Error("no user"));
    socket.data.user = user;
    next();
  });
  ioServer.on("connection", (socket) => {
    socket.emit("welcome", { user: socket.data.user, ...extra(socket) });
    socket.on("echo", (payload, ack) => ack(payload));
  });
  return ioServer;
}

/** Emits `echo` and resolves with the acknowledgement. */
export function echo(socket, payload) {
  return socket.timeout(5_000).emitWithAck("echo", payload);
}

/** Path of a workspace binary built by `cargo build --release`. */
export const binary = bin;

/** Starts `proxy --config file` (a file the test wrote) and waits until `port` listens. */
export async function startGatewayWith(file, port, env = {}) {
  const proc = launch("proxy", ["--config", file], env);
  await waitListening(port, proc);
  return { proc, port, url: `http://127.0.0.1:${port}` };
}
