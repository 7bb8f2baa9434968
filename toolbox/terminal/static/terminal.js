// The sandbox's browser terminal: xterm.js attached to a daemon PTY over WebSocket.
// Every URL is relative, so the page works at the preview root and under /proxy/{port}/.
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  // One PTY per browser tab, kept across reloads so a reload re-attaches (with scrollback).
  const session = params.get("session") || sessionStorage.getItem("terminal-session") ||
    "web-" + Math.random().toString(36).slice(2, 10);
  sessionStorage.setItem("terminal-session", session);

  const status = document.getElementById("status");
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false,
                              fontFamily: "Menlo, Consolas, 'DejaVu Sans Mono', monospace" });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.sandboxTerminal = term;  // for tests and debugging

  const base = location.pathname.replace(/[^/]*$/, "");
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + base;
  const encoder = new TextEncoder();
  let socket = null;
  let exited = false;
  let retry = 0;

  function api(path) { return base + "api/pty" + path; }

  async function resize() {
    fit.fit();
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    await fetch(api("/" + encodeURIComponent(session) + "/resize"), {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ cols: term.cols, rows: term.rows }),
    }).catch(() => {});
  }

  async function connect() {
    exited = false;
    const id = encodeURIComponent(session);
    const existing = await fetch(api("/" + id)).then((r) => r.ok).catch(() => false);
    const path = existing
      ? "/" + id + "/connect"
      : "/create-connect?id=" + id + "&cols=" + term.cols + "&rows=" + term.rows;
    // Re-attaching replays the PTY's scrollback: start from a clean screen.
    term.reset();
    socket = new WebSocket(wsBase + "api/pty" + path, ["X-Daytona-Pty-Exit-Control"]);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => { retry = 0; status.textContent = ""; if (existing) resize(); };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") { term.write(new Uint8Array(event.data)); return; }
      let message;
      try { message = JSON.parse(event.data); } catch (e) { term.write(event.data); return; }
      if (message.type === "control" && message.status === "exited") exited = true;
      else if (message.type === "control" && message.status === "error") status.textContent = message.error;
    };
    socket.onclose = () => {
      socket = null;
      if (exited) {
        term.write("\r\n[process exited; press any key for a new shell]\r\n");
        return;
      }
      status.textContent = "disconnected, reconnecting...";
      retry = Math.min(retry + 1, 5);
      setTimeout(connect, 500 * retry);
    };
  }

  term.onData((data) => {
    if (socket && socket.readyState === WebSocket.OPEN) { socket.send(encoder.encode(data)); return; }
    if (exited && !socket) {
      // The shell ended: start a fresh PTY under a new id.
      sessionStorage.removeItem("terminal-session");
      location.search = "";
    }
  });
  window.addEventListener("resize", () => { clearTimeout(window._rt); window._rt = setTimeout(resize, 100); });
  term.focus();
  connect();
})();
