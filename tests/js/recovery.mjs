// A forced transport drop of an @azure/web-pubsub-client on the reliable
// subprotocol: the client recovers its connection, and every message sent
// while it was away arrives exactly once, in order.
//
//   node recovery.mjs <connection string> <hub> [client host:port] [hops]
//
// With the third argument the client connects (and reconnects) to that host, e.g. a
// proxy that sends the reconnection to another node of a cluster ("" for none). The
// fourth repeats the drop and the recovery that many times (default 1).
//
// The drop: the SDK's message handler is detached from its `ws` socket
// (private field `_wsClient._socket`), so two group messages (m1, m2 the first
// time) reach the socket but not the SDK (lost in transit); then `terminate()`
// destroys the TCP socket without a close frame, as a network failure would.
// Three more (m3..m5) are sent while the client is away. All are
// @azure/web-pubsub REST sends; at the end the client sends one to its group.
// Observations: connected, disconnected, group-message, ack, "dropped"
// {hop, closeCode, lost}, "recovered" {sameConnectionId, newSocket}.

import WebSocket from "ws";
import { WebPubSubClient } from "@azure/web-pubsub-client";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const clientHost = process.argv[4] || undefined;
const hops = Number(process.argv[5] ?? 1);
const WAIT = 10000;

const service = new WebPubSubServiceClient(connectionString, hub);
const group = service.group("g1");

run(async () => {
  const client = new WebPubSubClient({
    getClientAccessUrl: async () => {
      const roles = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"];
      const url = new URL((await service.getClientAccessToken({ userId: "rita", roles })).url);
      if (clientHost) url.host = clientHost;
      return url.toString();
    },
  });
  const rec = new Recorder();
  client.on("connected", (e) => {
    emit("connected", { connectionId: e.connectionId, userId: e.userId ?? null });
    rec.push({ kind: "connected" });
  });
  client.on("disconnected", (e) => {
    emit("disconnected", { connectionId: e.connectionId ?? null, message: e.message ?? null });
    rec.push({ kind: "disconnected" });
  });
  client.on("group-message", (e) => {
    const obs = { data: e.message.data, sequenceId: e.message.sequenceId ?? null };
    emit("group-message", obs);
    rec.push({ kind: "group-message", ...obs });
  });
  const got = (data) => (m) => m.kind === "group-message" && m.data === data;

  await withTimeout(client.start(), WAIT, "client start");
  await rec.waitFor((m) => m.kind === "connected", "connected");
  const connectionId = client._connectionId;
  const joined = await withTimeout(client.joinGroup("g1"), WAIT, "join ack");
  emit("ack", { op: "joinGroup", ackId: joined.ackId });
  await group.sendToAll("m0", { contentType: "text/plain" });
  await rec.waitFor(got("m0"), "m0");

  let next = 1; // m0 is out; every later message is m<next>
  const sendNext = async () => group.sendToAll(`m${next++}`, { contentType: "text/plain" });
  const first = client._wsClient?._socket;
  for (let hop = 1; hop <= hops; hop++) {
    const socket = client._wsClient?._socket;
    if (!(socket instanceof WebSocket)) throw new Error("the client's ws socket was not found");
    if (hop > 1 && socket === first) throw new Error(`hop ${hop}: the socket was not replaced`);
    // The transport starts losing frames: the SDK's message handler is detached
    // from its socket, and the next two messages reach that socket only.
    socket.onmessage = null;
    const lost = new Recorder();
    socket.on("message", (data) => {
      const frame = JSON.parse(data.toString());
      if (frame.type === "message") lost.push(frame.data);
    });
    await sendNext();
    await sendNext();
    const last = `m${next - 1}`;
    await lost.waitFor((data) => data === last, `${last} on the losing socket`);
    const closed = new Promise((resolve) => socket.once("close", (code) => resolve(code)));
    socket.terminate();
    emit("dropped", { hop, closeCode: await withTimeout(closed, WAIT, "socket close"), lost: lost.items });
    // Sent while the client is away (or recovering).
    for (let i = 0; i < 3; i++) await sendNext();
    const awaited = `m${next - 1}`;
    await rec.waitFor(got(awaited), `${awaited} after recovery ${hop}`, WAIT);
  }
  const socket = first;

  // The recovered connection works both ways.
  const echo = `m${next}`;
  const sent = await withTimeout(client.sendToGroup("g1", echo, "text"), WAIT, "send ack");
  emit("ack", { op: "sendToGroup", ackId: sent.ackId });
  await rec.waitFor(got(echo), `${echo} (own echo)`);
  emit("recovered", {
    sameConnectionId: client._connectionId === connectionId,
    newSocket: client._wsClient?._socket !== socket,
  });
  client.stop();
}, 25000 + 1000 * hops);
