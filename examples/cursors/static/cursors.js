// The collaborative cursors page, on the official @azure/web-pubsub-client.
//
// - On start: join the group "room" and invokeEvent("hello"): the app server answers
//   with our name and colour, who else is here, and how long a resting pointer's stream
//   stays open (idleTimeoutMs).
// - While our pointer moves over the board: one group stream (openGroupStream) whose
//   chunks are the pointer's positions (JSON, fractions of the board's size); ended when
//   the pointer leaves the board. A pointer that rests longer than idleTimeoutMs has its
//   stream closed by the service (IdleTimeout); the next move opens a new one.
// - Every other page's stream (onGroupStream) is a cursor on our board, removed when
//   that stream ends or fails.

import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";

const GROUP = "room";
const MAX_CURSORS = 100; // remote cursors shown at once; later streams are ignored
const MAX_LOG = 50;
const OPEN_TIMEOUT_MS = 10_000;
const COLOUR = /^#[0-9a-f]{6}$/i;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const name = params.get("name") || `guest-${Math.floor(Math.random() * 1e4)}`;

function setStatus(text, state) {
  $("status").textContent = text;
  if (state) {
    document.body.dataset.state = state;
  }
}

function note(text, detail) {
  const item = document.createElement("li");
  item.textContent = text;
  if (detail) {
    item.title = detail;
  }
  $("log").prepend(item);
  while ($("log").children.length > MAX_LOG) {
    $("log").lastElementChild.remove();
  }
}

function swatch(colour) {
  const dot = document.createElement("span");
  dot.className = "swatch";
  dot.style.background = colour;
  return dot;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function getClientAccessUrl() {
  const resp = await fetch(`/negotiate?name=${encodeURIComponent(name)}`);
  const body = await resp.json();
  if (!resp.ok) {
    throw new Error(`negotiate: ${resp.status} ${body.error}`);
  }
  return body.url;
}

// -- our pointer: one stream while it moves over the board --------------------------

class PointerStream {
  constructor(client, me, idleTimeoutMs) {
    this.client = client;
    this.me = me;
    this.idleTimeoutMs = idleTimeoutMs;
    this.stream = null; // the open GroupStreamWriter, if any
    this.pending = null; // the newest position not written yet
    this.inside = false;
    this.running = false;
  }

  move(x, y) {
    this.inside = true;
    this.pending = { x, y }; // only the newest position matters: at most one waits
    this.#run();
  }

  leave() {
    this.inside = false;
    this.pending = null;
    this.#run();
  }

  #show(text, state) {
    $("sending").textContent = text;
    $("sending").dataset.state = state;
  }

  async #open() {
    const stream = await withTimeout(
      this.client.openGroupStream(GROUP, { noEcho: true, idleTimeoutInMs: this.idleTimeoutMs }),
      OPEN_TIMEOUT_MS,
      "openGroupStream",
    );
    stream.onError((error) => {
      // The service closed it (IdleTimeout after a rest, or refused it).
      if (this.stream === stream) {
        this.stream = null;
        this.#show(`closed by the service: ${error.name}`, "closed");
        note(`your stream was closed: ${error.name}`);
      }
    });
    this.stream = stream;
    this.#show("shared", "open");
  }

  async #run() {
    if (this.running) {
      return;
    }
    this.running = true;
    let failures = 0;
    try {
      for (;;) {
        if (this.pending) {
          const position = this.pending;
          this.pending = null;
          try {
            if (!this.stream) {
              await this.#open();
            }
            await this.stream.write({ ...position, colour: this.me.colour }, "json");
            failures = 0;
          } catch (error) {
            // The stream closed under us (or could not open): retry on a new one, twice.
            this.stream = null;
            if (++failures > 2) {
              this.#show(`not shared: ${error.message}`, "failed");
              return;
            }
            this.pending ??= position;
          }
        } else if (!this.inside && this.stream) {
          const stream = this.stream;
          this.stream = null;
          this.#show("not shared", "idle");
          await stream.end().catch(() => {}); // closed meanwhile: nothing left to end
        } else {
          return;
        }
      }
    } finally {
      this.running = false;
    }
  }
}

function trackPointer(board, pointer) {
  board.addEventListener("pointermove", (event) => {
    const box = board.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    pointer.move(
      clamp((event.clientX - box.left) / box.width),
      clamp((event.clientY - box.top) / box.height),
    );
  });
  board.addEventListener("pointerleave", () => pointer.leave());
}

// -- everyone else's pointers: a cursor per stream --------------------------------

function isPosition(data) {
  return (
    data !== null &&
    typeof data === "object" &&
    Number.isFinite(data.x) &&
    Number.isFinite(data.y) &&
    data.x >= 0 &&
    data.x <= 1 &&
    data.y >= 0 &&
    data.y <= 1 &&
    typeof data.colour === "string" &&
    COLOUR.test(data.colour)
  );
}

async function showCursor(stream) {
  const layer = $("cursors");
  if (layer.children.length >= MAX_CURSORS) {
    return;
  }
  let cursor = null;
  let who = "someone";
  let ending = "ended";
  let detail = "";
  try {
    for await (const fragment of stream) {
      if (!isPosition(fragment.data)) {
        continue; // not a cursor position: ignored
      }
      if (cursor === null) {
        who = fragment.fromUserId || "anonymous";
        cursor = document.createElement("div");
        cursor.className = "cursor";
        cursor.dataset.user = who;
        cursor.dataset.stream = stream.streamId;
        cursor.style.background = fragment.data.colour;
        const label = document.createElement("span");
        label.textContent = who;
        cursor.append(label);
        layer.append(cursor);
      }
      cursor.dataset.x = String(fragment.data.x);
      cursor.dataset.y = String(fragment.data.y);
      cursor.style.left = `${fragment.data.x * 100}%`;
      cursor.style.top = `${fragment.data.y * 100}%`;
    }
  } catch (error) {
    // IdleTimeout (the service's, or ours: see onGroupStream below), Cancelled (the
    // publisher went away), or the error the publisher ended its stream with.
    ending = error?.name ?? "error";
    detail = error?.message ?? "";
  } finally {
    if (cursor !== null) {
      cursor.remove();
      note(`${who}'s cursor is gone (${ending})`, detail);
    }
  }
}

// -- start --------------------------------------------------------------------------

const me = {}; // what the app server said of us: name, colour, here, idleTimeoutMs

async function hello(client) {
  const answer = await client.invokeEvent("hello", {}, "json");
  Object.assign(me, answer.data);
  $("me").replaceChildren(swatch(me.colour), `You are ${me.name}`);
  $("me").dataset.name = me.name;
  $("me").dataset.colour = me.colour;
  const here = me.here.map((other) => {
    const item = document.createElement("li");
    item.dataset.name = other.name;
    item.append(swatch(other.colour), other.name);
    return item;
  });
  $("here").replaceChildren(...(here.length ? here : ["nobody yet"]));
}

async function start() {
  // The plain JSON subprotocol, not the reliable one (the client's default): a cursor
  // is worth nothing late, and a page that goes away should take its cursor with it at
  // once, not after the service's recovery window. After a reconnection (a new
  // connection: the client rejoins the room) the page says hello again.
  const client = new WebPubSubClient({ getClientAccessUrl }, { protocol: WebPubSubJsonProtocol() });
  let started = false;
  client.on("disconnected", () => setStatus("disconnected, reconnecting…"));
  client.on("connected", () => {
    setStatus("connected");
    if (started) {
      hello(client).catch((error) => setStatus(`hello failed: ${error.message}`));
    }
  });
  client.on("stopped", () => setStatus("stopped", "stopped"));
  addEventListener("pagehide", () => client.stop());
  await client.start();
  await client.joinGroup(GROUP);
  await hello(client);
  started = true;

  // A publisher that vanished without ending its stream: given up after three of its
  // idle timeouts (the service's own idle timeout normally ends it first).
  client.onGroupStream(showCursor, {
    groupNames: [GROUP],
    idleTimeoutInMs: 3 * me.idleTimeoutMs,
  });
  trackPointer($("board"), new PointerStream(client, me, me.idleTimeoutMs));
  setStatus("connected", "ready");
}

start().catch((error) => {
  setStatus(`failed: ${error.message}`, "failed");
});
