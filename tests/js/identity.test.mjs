// Identity the upstream can trust (docs/request-handling.md), tried as an attacker
// would against the real gateway in front of a plain Node socket.io server that records
// the raw headers of every request reaching it: hop-by-hop games with `Connection`,
// underscore spellings of the identity header, and taking over another user's
// Engine.IO session with one's own valid token.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { Server } from "socket.io";
import { claimsFor, mint, startGateway, stopAll } from "./harness.mjs";

after(stopAll);

/** A Node socket.io server that records the raw header list of every request. */
async function recordingServer() {
  const http = createServer();
  const seen = [];
  const record = (req) => seen.push({ url: req.url, rawHeaders: req.rawHeaders });
  // Anything but socket.io: 404, as an app server would answer.
  http.on("request", (req, res) => {
    if (!req.url.startsWith("/socket.io/")) res.writeHead(404).end("not found");
  });
  const ioServer = new Server(http, { pingInterval: 25_000 });
  // After socket.io took over the listeners, so that its requests are recorded too.
  http.prependListener("request", record);
  http.prependListener("upgrade", record);
  ioServer.on("connection", (socket) => {
    socket.emit("welcome", { user: socket.handshake.headers["x-auth-user"] ?? null });
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return { http, ioServer, seen, port: http.address().port };
}

/**
 * Sends `head` (and `body`) on a fresh TCP connection and resolves with the response:
 * status, headers, and the body (for a 101: whatever arrived within 300 ms after it).
 */
function raw(port, head, body = "") {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      sock.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish(parse(buf, true)), 5_000);
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parse(buf, false);
      if (r?.status === 101) {
        setTimeout(() => finish(parse(buf, true)), 300);
      } else if (r) {
        clearTimeout(timer);
        finish(r);
      }
    });
    sock.on("end", () => finish(parse(buf, true)));
    sock.on("error", (e) => (done ? null : reject(e)));
    sock.write(head.replace(/\n/g, "\r\n") + "\r\n" + body);
  });
}

function parse(buf, final) {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return final ? { status: 0, headers: {}, body: buf.toString("latin1") } : null;
  const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
  const status = Number(lines[0].split(" ")[1]);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(":");
    headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
  }
  const body = buf.subarray(end + 4);
  if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
    const decoded = dechunk(body);
    if (!decoded && !final) return null;
    return { status, headers, body: (decoded ?? body).toString("latin1") };
  }
  const len = Number(headers["content-length"] ?? NaN);
  if (!final && status !== 101 && !(body.length >= len)) return null;
  return { status, headers, body: body.toString("latin1") };
}

/** A complete chunked body, decoded; null while its last chunk has not arrived. */
function dechunk(raw) {
  const parts = [];
  let at = 0;
  for (;;) {
    const eol = raw.indexOf("\r\n", at);
    if (eol < 0) return null;
    const size = parseInt(raw.subarray(at, eol).toString("latin1").split(";")[0], 16);
    if (Number.isNaN(size)) return null;
    if (size === 0) return Buffer.concat(parts);
    if (raw.length < eol + 2 + size + 2) return null;
    parts.push(raw.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

const POLL = "/socket.io/?EIO=4&transport=polling";
const WS_HEADERS = "Upgrade: websocket\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13";

/** Every identity claim the upstream could read from a raw header list. */
function identities(rawHeaders) {
  const out = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i].toLowerCase().replace(/_/g, "-") === "x-auth-user") out.push(rawHeaders[i + 1]);
  }
  return out;
}

describe("identity headers the client cannot choose", () => {
  let up, gw;
  const alice = mint(claimsFor("alice"));
  before(async () => {
    up = await recordingServer();
    gw = await startGateway({ upstreamPort: up.port });
  });
  after(() => up.ioServer.close());

  test("Connection naming x-auth-user, with x_auth_user: admin: 400, nothing upstream", async () => {
    up.seen.length = 0;
    const polling = await raw(
      gw.port,
      `GET ${POLL}&token=${alice} HTTP/1.1\nHost: gw\nConnection: x-auth-user\nx_auth_user: admin\n`,
    );
    assert.equal(polling.status, 400, JSON.stringify(polling));
    assert.equal(JSON.parse(polling.body).error, "bad_request");
    const upgrade = await raw(
      gw.port,
      `GET /socket.io/?EIO=4&transport=websocket&token=${alice} HTTP/1.1\nHost: gw\nConnection: Upgrade, x-auth-user\n${WS_HEADERS}\n`,
    );
    assert.equal(upgrade.status, 400, JSON.stringify(upgrade));
    assert.deepEqual(up.seen, [], "the upstream saw a request");
  });

  test("Connection naming Host, Content-Length or Transfer-Encoding: 400", async () => {
    up.seen.length = 0;
    for (const named of ["Host", "content-length", "Transfer-Encoding", "keep-alive, X-AUTH-USER"]) {
      const r = await raw(gw.port, `GET ${POLL}&token=${alice} HTTP/1.1\nHost: gw\nConnection: ${named}\n`);
      assert.equal(r.status, 400, `${named}: ${JSON.stringify(r)}`);
    }
    assert.deepEqual(up.seen, []);
  });

  test("underscore and letter-case copies never reach the upstream, on any path", async () => {
    for (const spelling of ["x_auth_user", "X_AUTH_USER", "X_Auth-User", "x-auth_user", "X-AUTH-USER"]) {
      up.seen.length = 0;
      const withToken = await raw(gw.port, `GET ${POLL}&token=${alice} HTTP/1.1\nHost: gw\n${spelling}: admin\n`);
      assert.equal(withToken.status, 200, `${spelling}: ${JSON.stringify(withToken)}`);
      const open = await raw(gw.port, `GET /elsewhere HTTP/1.1\nHost: gw\n${spelling}: admin\n`);
      assert.equal(open.status, 404, `${spelling}: ${JSON.stringify(open)}`); // the Node server's 404
      assert.equal(up.seen.length, 2, spelling);
      assert.deepEqual(identities(up.seen[0].rawHeaders), ["alice"], `${spelling}: ${up.seen[0].rawHeaders}`);
      assert.deepEqual(identities(up.seen[1].rawHeaders), [], `${spelling}: ${up.seen[1].rawHeaders}`);
    }
  });

  test("a WebSocket upgrade carries the verified user and no client copy", async () => {
    up.seen.length = 0;
    const r = await raw(
      gw.port,
      `GET /socket.io/?EIO=4&transport=websocket&token=${alice} HTTP/1.1\nHost: gw\nConnection: Upgrade\n${WS_HEADERS}\nx_auth_user: admin\n`,
    );
    assert.equal(r.status, 101, JSON.stringify(r));
    assert.equal(up.seen.length, 1);
    assert.deepEqual(identities(up.seen[0].rawHeaders), ["alice"], `${up.seen[0].rawHeaders}`);
  });
});

/** A polling session opened through the gateway: its sid, and alice's first packets. */
async function openSession(port, token) {
  const open = await raw(port, `GET ${POLL}&token=${token} HTTP/1.1\nHost: gw\n`);
  assert.equal(open.status, 200, JSON.stringify(open));
  const sid = JSON.parse(open.body.slice(1)).sid;
  const connect = await raw(
    port,
    `POST ${POLL}&sid=${sid}&token=${token} HTTP/1.1\nHost: gw\nContent-Type: text/plain\nContent-Length: 2\n`,
    "40",
  );
  assert.equal(connect.status, 200, JSON.stringify(connect));
  return sid;
}

for (const rejectWith of ["http", "socketio"]) {
  describe(`sessions bound to their user (reject_with = ${rejectWith})`, () => {
    let up, gw;
    const alice = mint(claimsFor("alice"));
    const mallory = mint(claimsFor("mallory"));
    before(async () => {
      up = await recordingServer();
      gw = await startGateway({ upstreamPort: up.port, auth: `reject_with = "${rejectWith}"` });
    });
    after(() => up.ioServer.close());

    test("another user's token with alice's sid: refused for poll, POST and upgrade", async () => {
      const sid = await openSession(gw.port, alice);
      up.seen.length = 0;
      const poll = await raw(gw.port, `GET ${POLL}&sid=${sid}&token=${mallory} HTTP/1.1\nHost: gw\n`);
      const post = await raw(
        gw.port,
        `POST ${POLL}&sid=${sid}&token=${mallory} HTTP/1.1\nHost: gw\nContent-Type: text/plain\nContent-Length: 18\n`,
        '42["echo","pwned"]',
      );
      const upgrade = await raw(
        gw.port,
        `GET /socket.io/?EIO=4&transport=websocket&sid=${sid}&token=${mallory} HTTP/1.1\nHost: gw\nConnection: Upgrade\n${WS_HEADERS}\n`,
      );
      assert.ok(!poll.body.includes("welcome"), `mallory read alice's packets: ${poll.body}`);
      if (rejectWith === "http") {
        for (const [name, r] of [["poll", poll], ["post", post], ["upgrade", upgrade]]) {
          assert.equal(r.status, 403, `${name}: ${JSON.stringify(r)}`);
          assert.equal(JSON.parse(r.body).error, "session_mismatch", name);
        }
      } else {
        // Engine.IO's answers: a close packet for the poll, a refused POST, no upgrade.
        assert.equal(poll.status, 200, JSON.stringify(poll));
        assert.equal(poll.body, "1");
        assert.equal(post.status, 400, JSON.stringify(post));
        assert.notEqual(upgrade.status, 101, JSON.stringify(upgrade));
      }
      assert.deepEqual(up.seen, [], "mallory's requests reached the upstream");

      // Alice's session is untouched: her next poll reads her welcome.
      const mine = await raw(gw.port, `GET ${POLL}&sid=${sid}&token=${alice} HTTP/1.1\nHost: gw\n`);
      assert.equal(mine.status, 200);
      assert.match(mine.body, /"welcome",\{"user":"alice"\}/);
      assert.ok(!gw.proc.logs().includes(sid), `the sid is in the gateway's log:\n${gw.proc.logs()}`);
    });
  });
}

/** Other spellings of `sid=<sid>` that a decoding server (engine.io) reads as alice's `sid`. */
const SID_SPELLINGS = [
  ["first character percent-encoded", (sid) => `sid=%${sid.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}${sid.slice(1)}`],
  ["sid twice", (sid) => `sid=zzzz&sid=${sid}`],
  ["%73id then sid", (sid) => `%73id=zzzz&sid=${sid}`],
  ["SID then sid", (sid) => `SID=zzzz&sid=${sid}`],
];

describe("alice's sid under other spellings (reject_with = http)", () => {
  let up, gw;
  const alice = mint(claimsFor("alice"));
  const mallory = mint(claimsFor("mallory"));
  before(async () => {
    up = await recordingServer();
    gw = await startGateway({ upstreamPort: up.port, auth: `reject_with = "http"` });
  });
  after(() => up.ioServer.close());

  for (const [name, spell] of SID_SPELLINGS) {
    test(`${name}: poll and POST with mallory's token are 400 bad_request, nothing upstream`, async () => {
      // The sid is whatever the gateway handed out: taken from alice's open packet.
      const sid = await openSession(gw.port, alice);
      const spelled = spell(sid);
      up.seen.length = 0;
      const poll = await raw(gw.port, `GET ${POLL}&${spelled}&token=${mallory} HTTP/1.1\nHost: gw\n`);
      const body = '42["echo","pwned"]';
      const post = await raw(
        gw.port,
        `POST ${POLL}&${spelled}&token=${mallory} HTTP/1.1\nHost: gw\nContent-Type: text/plain\nContent-Length: ${body.length}\n`,
        body,
      );
      assert.ok(!poll.body.includes("welcome"), `mallory read alice's packets: ${poll.body}`);
      for (const [how, r] of [["poll", poll], ["post", post]]) {
        assert.equal(r.status, 400, `${how} ${spelled}: ${JSON.stringify(r)}`);
        assert.equal(JSON.parse(r.body).error, "bad_request", `${how} ${spelled}`);
      }
      assert.deepEqual(up.seen, [], "mallory's requests reached the upstream");

      // Alice's session is untouched: her next poll reads her welcome.
      const mine = await raw(gw.port, `GET ${POLL}&sid=${sid}&token=${alice} HTTP/1.1\nHost: gw\n`);
      assert.equal(mine.status, 200, JSON.stringify(mine));
      assert.match(mine.body, /"welcome",\{"user":"alice"\}/);
    });
  }
});
