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
//
// Recovery: every message of a room carries its event id (`id`); the client keeps the last one
// of each room (`lastIds`) and, on every reconnect, asks for what it missed: `?since=<id>` when
// the URL names one room (or none: the default room), else `?since=` with a cursor of every
// room it knows (`a=<id>&b=<id>`, URL-encoded). `join(room)` sends the room's last id too. The
// server replays the missed messages, in order, before the live ones, each once; when they
// are gone from its history, a "resync" frame names the rooms whose state the page must reload
// (their ids are then forgotten).
"use strict";

// Without the rooms feature, and when a URL names no room, the client is in this one.
const DEFAULT_ROOM = "lobby";

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
    this.lastIds = new Map();
  }

  // The URL with `since` for the rooms it names whose last id is known (the README's
  // "Recovery"); a URL that sets `since` itself is left alone.
  resumeUrl(url) {
    const parsed = new URL(url, location.href);
    if (parsed.searchParams.has("since")) return parsed.href;
    const named = parsed.searchParams.getAll("room");
    const rooms = named.length ? named : [DEFAULT_ROOM];
    const known = rooms.filter((room) => this.lastIds.has(room));
    if (known.length === 1 && rooms.length === 1) {
      parsed.searchParams.set("since", this.lastIds.get(known[0]));
    } else if (known.length) {
      const cursor = new URLSearchParams(known.map((room) => [room, this.lastIds.get(room)]));
      parsed.searchParams.set("since", cursor.toString());
    }
    return parsed.href;
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
    const socket = new WebSocket(this.resumeUrl(url));
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
    } else if (frame.type === "resync") {
      for (const room of frame.rooms ?? []) this.lastIds.delete(room);
    } else if (frame.id && frame.room) {
      this.lastIds.set(frame.room, frame.id); // where to resume from after a reconnect
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  // Send one message; false when not connected (the caller decides whether to retry).
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  // Join `room`, resuming after its last known id (a room left and joined again gets what it
  // missed meanwhile). The answer is a "joined" frame, or an "error" (e.g. "forbidden").
  join(room) {
    const message = { type: "join", room };
    if (this.lastIds.has(room)) message.since = this.lastIds.get(room);
    return this.send(message);
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
