// The README's "In front of your own socket.io server", followed literally: its config
// block (with free ports), `proxy --check`, its socket.io server code (which trusts
// `x-auth-user`), and the official client with a valid, an expired, no and a badly
// signed token, expecting exactly the `connect_error` messages and codes the README
// lists.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { after, test } from "node:test";
import { Server } from "socket.io";
import { io } from "socket.io-client";
import { SECRET, binary, freePort, mint, once, repoRoot, scratch, startGatewayWith, stopAll } from "./harness.mjs";

after(stopAll);

const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8");
const section = (() => {
  const start = readme.indexOf("## In front of your own socket.io server");
  assert.ok(start >= 0, "the README has the section");
  const end = readme.indexOf("\n## ", start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
})();

/** The code blocks of the section in `lang`. */
function blocks(lang) {
  return [...section.matchAll(new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g"))].map((m) => m[1]);
}

test("the README's own-server section works as written", async () => {
  // 2. The config, with free ports for the three addresses it names.
  const [config] = blocks("toml");
  for (const addr of ['"0.0.0.0:8080"', '"127.0.0.1:9090"', '"127.0.0.1:3000"']) {
    assert.ok(config.includes(addr), `the config names ${addr}`);
  }
  const [port, metrics, upstream] = [await freePort(), await freePort(), await freePort()];
  const text = config
    .replace('"0.0.0.0:8080"', `"127.0.0.1:${port}"`)
    .replace('"127.0.0.1:9090"', `"127.0.0.1:${metrics}"`)
    .replace('"127.0.0.1:3000"', `"127.0.0.1:${upstream}"`);
  const issuer = text.match(/^issuer = "([^"]+)"/m)[1];
  const audience = text.match(/^audience = "([^"]+)"/m)[1];
  assert.match(text, /^secret_env = "JWT_SECRET"/m);
  const dir = scratch();
  writeFileSync(path.join(dir, "gateway.toml"), text);

  // 3. `proxy --check --config gateway.toml` prints ok; then it serves.
  const sh = blocks("sh").join("\n");
  assert.match(sh, /proxy --check --config gateway\.toml/);
  assert.match(sh, /proxy --config gateway\.toml/);
  const checked = execFileSync(binary("proxy"), ["--check", "--config", "gateway.toml"], {
    cwd: dir,
    env: { ...process.env, JWT_SECRET: SECRET },
    encoding: "utf8",
  });
  assert.equal(checked, "ok\n");

  // 5. The socket.io server exactly as the README writes it, on the upstream port.
  const serverCode = blocks("js").find((b) => b.includes("new Server("));
  assert.ok(serverCode.includes('httpServer.listen(3000, "127.0.0.1")'));
  const body = serverCode
    .split("\n")
    .filter((l) => !l.startsWith("import "))
    .join("\n")
    .replace('httpServer.listen(3000, "127.0.0.1")', `httpServer.listen(${upstream}, "127.0.0.1")`);
  const { httpServer, io: ioServer } = new Function("createServer", "Server", `${body}\nreturn { httpServer, io };`)(
    createServer,
    Server,
  );
  await once(httpServer, "listening");
  const gw = await startGatewayWith(path.join(dir, "gateway.toml"), port);
  try {
    const ready = await fetch(`http://127.0.0.1:${metrics}/readyz`);
    assert.equal(ready.status, 200);

    // 4. The official client, as the README connects it, and what it says a user sees.
    const clientCode = blocks("js").find((b) => b.includes("connect_error"));
    const expected = Object.fromEntries(
      [...clientCode.matchAll(/\/\/\s+(.+?)\s+->\s+"([^"]+)" (\w+)/g)].map((m) => [m[1], { message: m[2], code: m[3] }]),
    );
    assert.deepEqual(Object.keys(expected), ["expired token", "no token", "bad signature"]);
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: "alice", iss: issuer, aud: audience, iat: now };

    const socket = io(gw.url, { query: { token: mint({ ...claims, exp: now + 60 }) } });
    const welcome = await once(socket, "welcome");
    assert.deepEqual(welcome, { user: "alice" });
    socket.close();

    for (const [name, opts] of [
      ["expired token", { query: { token: mint({ ...claims, iat: now - 120, exp: now - 60 }) } }],
      ["no token", {}],
      ["bad signature", { query: { token: mint({ ...claims, exp: now + 60 }, "another-secret-0123456789-0123456789") } }],
    ]) {
      const refused = io(gw.url, opts);
      let attempts = 0;
      refused.io.on("reconnect_attempt", () => attempts++);
      const err = await once(refused, "connect_error");
      assert.equal(err.message, expected[name].message, name);
      assert.equal(err.data?.error, expected[name].code, name);
      assert.equal(refused.active, false, `${name}: the client does not retry`);
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(attempts, 0, `${name}: no reconnection attempt`);
      refused.close();
    }
  } finally {
    ioServer.close();
    await gw.proc.stop("SIGTERM");
  }
});
