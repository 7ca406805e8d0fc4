// A small WebSocket client for the service's JSON protocol.
//
// It reconnects by itself with exponential backoff and full jitter: after the n-th failed
// attempt it waits a random time between 0 and min(maxDelay, baseDelay * 2^n), so a thousand
// clients dropped by one server restart do not all come back in the same instant. A `welcome`
// frame resets the backoff. Events: "state" (connecting | open | reconnecting | closed),
// "frame" (every frame from the server, parsed), "retry" ({delay} before the next attempt),
// "error" (the url function failed), "close" ({code, reason} of a closed socket).
// `url` may be a function, called before every attempt (to rejoin the rooms a page is in); it
// may return a promise (to fetch a fresh token first), and a rejected one counts as a failed
// attempt.
//
// Heartbeats: a `{"type":"ping"}` from the server is answered with `{"type":"pong"}`. Once a
// ping has been seen on a connection, a watchdog treats it as dead when the server has sent
// nothing for `deadAfter` ms (by default the interval + timeout the `welcome` frame announces),
// drops it without waiting for a closing handshake a dead server would never finish, and
// reconnects with the same backoff. A server without heartbeats never pings, so it is never
// watched.
"use strict";

class RealtimeClient extends EventTarget {
  constructor(url, { baseDelay = 250, maxDelay = 10000, deadAfter = null } = {}) {
    super();
    this.url = typeof url === "function" ? url : () => url;
    this.baseDelay = baseDelay;
    this.maxDelay = maxDelay;
    this.deadAfter = deadAfter;
    this.announcedDeadAfter = null;
    this.pinged = false;
    this.watchdog = null;
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
    this.state = "closed";
  }

  async connect() {
    this.stopped = false;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let url;
    try {
      url = await this.url();
    } catch (error) {
      this.dispatchEvent(new CustomEvent("error", { detail: error }));
      if (!this.stopped) this.scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    const socket = new WebSocket(url);
    this.socket = socket;
    this.pinged = false;
    this.announcedDeadAfter = null;
    socket.addEventListener("open", () => this.setState("open"));
    socket.addEventListener("message", (event) => {
      if (this.socket !== socket) return; // one the watchdog gave up on
      // A frame holds one message per line: the server batches what a busy client has queued.
      for (const line of String(event.data).split("\n")) this.receive(line);
      this.feedWatchdog(socket);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      const { code, reason } = event;
      this.dispatchEvent(new CustomEvent("close", { detail: { code, reason } }));
      this.socket = null;
      clearTimeout(this.watchdog);
      if (this.stopped) {
        this.setState("closed");
        return;
      }
      this.scheduleReconnect();
    });
  }

  // Restart the countdown after every frame from the server, once pings are known to come.
  feedWatchdog(socket) {
    const limit = this.deadAfter ?? this.announcedDeadAfter;
    if (!this.pinged || !limit) return;
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      if (this.socket !== socket) return;
      // Forget the socket first: its close event may come much later, or never.
      this.socket = null;
      socket.close();
      this.scheduleReconnect();
    }, limit);
  }

  scheduleReconnect() {
    const ceiling = Math.min(this.maxDelay, this.baseDelay * 2 ** this.attempt);
    const delay = Math.random() * ceiling;
    this.attempt += 1;
    this.setState("reconnecting");
    this.dispatchEvent(new CustomEvent("retry", { detail: { delay } }));
    this.timer = setTimeout(() => this.connect(), delay);
  }

  receive(line) {
    let frame;
    try {
      frame = JSON.parse(line);
    } catch {
      return; // the server only sends JSON; anything else is not ours to handle
    }
    if (frame.type === "welcome") {
      this.attempt = 0;
      const heartbeat = frame.heartbeat;
      if (heartbeat) this.announcedDeadAfter = (heartbeat.interval + heartbeat.timeout) * 1000;
    } else if (frame.type === "ping") {
      this.pinged = true;
      this.send({ type: "pong" });
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  // Send one message; false when not connected (the caller decides whether to retry).
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  // Ask who is in `room` (one this client is in); the answer comes as a "frame" event of type
  // "presence" (or an "error" with code "not_a_member"). False when not connected. With
  // PRESENCE_EVENTS, "presence_join" and "presence_leave" frames come the same way.
  presence(room = "lobby") {
    return this.send({ type: "presence", room });
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.socket) this.socket.close(1000, "client closed");
    else this.setState("closed");
  }

  setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}

window.RealtimeClient = RealtimeClient;
