// The signed-in page's socket: connect through the gateway (same origin) with a
// short-lived token in the query, and fetch a fresh token before every reconnect, so
// tokens can expire quickly and reconnects after a server restart still succeed (the
// original article made tokens never expire to get that).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const log = (line) => {
    $("log").textContent += new Date().toLocaleTimeString() + "  " + line + "\n";
  };
  const setStatus = (text, cls) => {
    $("status").textContent = text;
    $("status").className = "status " + cls;
  };

  let token = null;
  let welcomes = 0;
  let refreshTimer = null;

  // Seconds until the token's exp (the payload is readable; the gateway checks it).
  function secondsLeft(t) {
    try {
      const b64 = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(b64)).exp - Date.now() / 1000;
    } catch (e) {
      return 0;
    }
  }

  // socket.io emits reconnect_attempt and opens the connection synchronously, so an
  // attempt cannot wait for a fetch: keep the cached token fresh instead, refreshing at
  // half its lifetime (and on every disconnect and attempt, below).
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const ms = Math.max(1000, (secondsLeft(token) * 1000) / 2);
    refreshTimer = setTimeout(() => fetchToken().catch((e) => log("token: " + e.message)), ms);
  }

  async function fetchToken() {
    const resp = await fetch("/getIoConnectionToken", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 403) {
      window.location.href = "/login";
      throw new Error("signed out");
    }
    if (!resp.ok) {
      refreshTimer = setTimeout(() => fetchToken().catch(() => {}), 1000);
      throw new Error("token request failed: " + resp.status);
    }
    token = await resp.json();
    scheduleRefresh();
    return token;
  }

  async function main() {
    await fetchToken();
    const socket = io({ query: { token }, reconnectionDelay: 1000, reconnectionDelayMax: 5000 });
    window.demoSocket = socket;

    // A fresh token as soon as the connection drops, and again before every attempt:
    // the attempt uses the newest token fetched so far.
    socket.on("disconnect", (reason) => {
      setStatus("disconnected (" + reason + ")", "disconnected");
      log("disconnected: " + reason);
      fetchToken().catch((e) => log("token: " + e.message));
    });
    socket.io.on("reconnect_attempt", (attempt) => {
      socket.io.opts.query = { token };
      log("reconnect attempt " + attempt);
      fetchToken().catch((e) => log("token: " + e.message));
    });
    socket.on("connect", () => {
      setStatus("connected", "connected");
      $("reason").textContent = "";
      log("connected over " + socket.io.engine.transport.name);
    });
    socket.on("connect_error", (err) => {
      const code = err.data && err.data.error ? " (" + err.data.error + ")" : "";
      $("reason").textContent = "Connection refused: " + err.message + code;
      setStatus(socket.active ? "retrying" : "refused", "refused");
      log("connect_error: " + err.message + code);
      // A gateway with reject_with = "socketio" refuses like io.use() middleware: the
      // client stops retrying. An expired token is worth one more try with a fresh one.
      if (!socket.active && err.data && err.data.error === "token_expired") {
        const stale = token;
        fetchToken()
          .then((fresh) => {
            if (fresh !== stale) {
              socket.io.opts.query = { token: fresh };
              log("retrying with a fresh token");
              socket.connect();
            }
          })
          .catch((e) => log("token: " + e.message));
      }
    });
    socket.on("welcome", (msg) => {
      welcomes += 1;
      $("welcome").textContent = "Server says: welcome " + msg.user;
      $("welcome").dataset.count = String(welcomes);
      log("welcome " + msg.user + " (#" + welcomes + ")");
    });
    // Shared chat, private messages and presence: with the Redis adapter they span
    // every upstream-demo instance of the cluster.
    const refreshPresence = () =>
      socket.emit("presence", (users) => ($("presence").textContent = users.join(", ") || "nobody"));
    socket.on("connect", refreshPresence);
    socket.on("broadcast", (m) => log(m.from + " (to everyone): " + m.text));
    socket.on("whisper", (m) => log(m.from + " (to you): " + m.text));
    $("presence-refresh").addEventListener("click", refreshPresence);
    $("broadcast-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      socket.emit("broadcast", { text: $("broadcast-text").value });
      $("broadcast-text").value = "";
    });
    $("whisper-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      socket.emit("whisper", { to: $("whisper-to").value, text: $("whisper-text").value });
      $("whisper-text").value = "";
    });
    $("echo-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = $("echo-text").value;
      socket.emit("echo", { text }, (ack) => log("echo: " + ack.text));
      $("echo-text").value = "";
    });
  }

  main().catch((e) => {
    setStatus("error", "refused");
    log(e.message);
  });
})();
