// The signed-in page's socket: connect through the gateway (same origin) with a
// short-lived token in the query; before the token expires, fetch a fresh one and hand
// it to the gateway's refresh endpoint, so the same Engine.IO session goes on (docs/demo.md,
// README "Refresh and sign-out"). When the user signs out everywhere, the gateway closes
// the socket with 1008 "token revoked" (or refuses it with connect_error token_revoked):
// the page then says it is signed out and does not reconnect.
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
  // The gateway's auth.refresh_path.
  const REFRESH_PATH = "/socket.io/refresh";
  // Refresh once this share of the token's lifetime has passed.
  const REFRESH_AT = 0.8;
  // Time left for the fetch and the refresh request, in seconds.
  const REFRESH_MARGIN = 2;

  let socket = null;
  let token = null;
  let welcomes = 0;
  let refreshTimer = null;
  let signedOut = false;
  // For the browser test and the curious: Engine.IO sessions opened, refreshes done.
  const stats = (window.demoStats = { opens: 0, refreshes: 0, signedOut: false });

  // The token's claims (the payload is readable; the gateway checks the signature).
  function claimsOf(t) {
    try {
      const b64 = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(b64));
    } catch (e) {
      return {};
    }
  }

  function showExpiry(exp) {
    if (!exp) return;
    $("expires").textContent = new Date(exp * 1000).toLocaleTimeString();
    $("expires").dataset.exp = String(exp);
  }

  // Stops everything for good: no refresh, no reconnect.
  function signOut(why) {
    if (signedOut) return;
    signedOut = stats.signedOut = true;
    clearTimeout(refreshTimer);
    setStatus("signed out", "signed-out");
    $("reason").textContent = why;
    $("expires").textContent = "-";
    log("signed out: " + why);
    if (socket) {
      socket.io.reconnection(false);
      socket.disconnect();
    }
  }

  // Every new connection (and every polling request of the current one) carries the
  // newest token: the query object is updated in place, which the client reads when it
  // opens a transport.
  function useToken(fresh) {
    token = fresh;
    if (!socket) return;
    socket.io.opts.query.token = fresh;
    const transport = socket.io.engine && socket.io.engine.transport;
    if (transport && transport.query) transport.query.token = fresh;
  }

  async function fetchToken() {
    const resp = await fetch("/getIoConnectionToken", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 403) {
      signOut("This browser's session has ended; sign in again.");
      throw new Error("signed out");
    }
    if (!resp.ok) throw new Error("token request failed: " + resp.status);
    useToken(await resp.json());
    return token;
  }

  // At REFRESH_AT of the current token's lifetime, and at least REFRESH_MARGIN seconds
  // before its exp (short tokens), but no sooner than a second from now.
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (signedOut) return;
    const c = claimsOf(token);
    const lifetime = (c.exp || 0) - (c.iat || 0);
    const at = Math.min((c.iat || 0) + lifetime * REFRESH_AT, (c.exp || 0) - REFRESH_MARGIN);
    const due = at - Date.now() / 1000;
    refreshTimer = setTimeout(refresh, Math.max(1000, due * 1000));
  }

  // A fresh token, handed to the gateway for the open session: its WebSockets are
  // then closed at the new token's exp instead of the old one's.
  async function refresh() {
    if (signedOut) return;
    try {
      await fetchToken();
    } catch (e) {
      if (signedOut) return;
      log("token: " + e.message + "; trying again in a second");
      refreshTimer = setTimeout(refresh, 1000);
      return;
    }
    if (socket && socket.connected && socket.io.engine && socket.io.engine.id) {
      const sid = socket.io.engine.id;
      try {
        const resp = await fetch(REFRESH_PATH + "?sid=" + encodeURIComponent(sid), {
          method: "POST",
          headers: { Authorization: "Bearer " + token },
          credentials: "same-origin",
          cache: "no-store",
        });
        const body = await resp.json().catch(() => ({}));
        if (resp.ok) {
          stats.refreshes += 1;
          showExpiry(body.exp);
          log("token refreshed in place (same session)");
        } else if (body.error === "token_revoked") {
          signOut("Signed out everywhere.");
          return;
        } else {
          // unknown_session: the socket is going away anyway, and the reconnect uses
          // the fresh token. Another answer (a gateway without the endpoint): the
          // socket is closed at the old token's exp and reconnects the same way.
          log("refresh refused: " + resp.status + (body.error ? " (" + body.error + ")" : ""));
        }
      } catch (e) {
        log("refresh: " + e.message);
      }
    }
    scheduleRefresh();
  }

  async function main() {
    await fetchToken();
    socket = io({ query: { token }, reconnectionDelay: 1000, reconnectionDelayMax: 5000 });
    window.demoSocket = socket;
    scheduleRefresh();
    $("signout-everywhere").addEventListener("submit", () => {
      // This page leaves: its own socket's close is not a sign-out to report.
      signedOut = true;
      clearTimeout(refreshTimer);
      socket.io.reconnection(false);
    });

    socket.io.on("open", () => (stats.opens += 1));
    // A fresh token as soon as the connection drops, and again before every attempt:
    // the attempt uses the newest token fetched so far.
    socket.on("disconnect", (reason, details) => {
      const closed = details && details.context;
      if (closed && closed.code === 1008 && closed.reason === "token revoked") {
        signOut("Signed out everywhere (the gateway closed this socket: token revoked).");
        return;
      }
      if (signedOut) return;
      setStatus("disconnected (" + reason + ")", "disconnected");
      log("disconnected: " + reason);
      fetchToken().catch((e) => log("token: " + e.message));
    });
    socket.io.on("reconnect_attempt", (attempt) => {
      log("reconnect attempt " + attempt);
      fetchToken().catch((e) => log("token: " + e.message));
    });
    socket.on("connect", () => {
      setStatus("connected", "connected");
      $("reason").textContent = "";
      showExpiry(claimsOf(socket.io.opts.query.token).exp);
      log("connected over " + socket.io.engine.transport.name);
    });
    socket.on("connect_error", (err) => {
      const code = err.data && err.data.error ? err.data.error : "";
      if (code === "token_revoked") {
        signOut("Signed out everywhere (the gateway refused this page's token: token revoked).");
        return;
      }
      if (signedOut) return;
      const shown = code ? " (" + code + ")" : "";
      $("reason").textContent = "Connection refused: " + err.message + shown;
      setStatus(socket.active ? "retrying" : "refused", "refused");
      log("connect_error: " + err.message + shown);
      // A gateway with reject_with = "socketio" refuses like io.use() middleware: the
      // client stops retrying. An expired token is worth one more try with a fresh one.
      if (!socket.active && code === "token_expired") {
        const stale = token;
        fetchToken()
          .then((fresh) => {
            if (fresh !== stale) {
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
    if (signedOut) return;
    setStatus("error", "refused");
    log(e.message);
  });
})();
