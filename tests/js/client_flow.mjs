// Two @azure/web-pubsub-client clients (alice, bob) against the service:
// connect, join a group, send to the group (text, JSON, binary, noEcho),
// receive REST sends from @azure/web-pubsub, send an event to the upstream and
// get the handler's reply plus the ack, leave the group, stop.
//
//   node client_flow.mjs <connection string> <hub>
//
// The hub's upstream must answer the user event "echo" with a text body.
// Observations: connected, ack, group-message, server-message, stopped.

import { WebPubSubClient } from "@azure/web-pubsub-client";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, plain, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const WAIT = 5000;

const service = new WebPubSubServiceClient(connectionString, hub);
const roles = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"];

function newClient(userId) {
  const client = new WebPubSubClient({
    // A function, so a reconnect would get a fresh URL (as apps do).
    getClientAccessUrl: async () => (await service.getClientAccessToken({ userId, roles })).url,
  });
  const rec = new Recorder();
  client.on("connected", (e) => {
    emit("connected", { client: userId, connectionId: e.connectionId, userId: e.userId ?? null });
    rec.push({ kind: "connected" });
  });
  client.on("disconnected", (e) => {
    emit("disconnected", { client: userId, connectionId: e.connectionId ?? null, message: e.message ?? null });
    rec.push({ kind: "disconnected" });
  });
  client.on("stopped", () => {
    emit("stopped", { client: userId });
    rec.push({ kind: "stopped" });
  });
  client.on("group-message", (e) => {
    const m = e.message;
    const obs = {
      client: userId,
      group: m.group,
      fromUserId: m.fromUserId ?? null,
      dataType: m.dataType,
      data: plain(m.data),
      sequenceId: m.sequenceId ?? null,
    };
    emit("group-message", obs);
    rec.push({ kind: "group-message", ...obs });
  });
  client.on("server-message", (e) => {
    const m = e.message;
    const obs = { client: userId, dataType: m.dataType, data: plain(m.data), sequenceId: m.sequenceId ?? null };
    emit("server-message", obs);
    rec.push({ kind: "server-message", ...obs });
  });
  return { client, rec, name: userId };
}

async function acked(who, op, promise) {
  const result = await withTimeout(promise, WAIT, `${who} ${op} ack`);
  emit("ack", { client: who, op, ackId: result.ackId ?? null, isDuplicated: result.isDuplicated ?? null });
  return result;
}

const got = (who, kind, data) => (m) =>
  m.kind === kind && JSON.stringify(m.data) === JSON.stringify(data);

run(async () => {
  const alice = newClient("alice");
  const bob = newClient("bob");
  await withTimeout(alice.client.start(), WAIT, "alice start");
  await withTimeout(bob.client.start(), WAIT, "bob start");
  await alice.rec.waitFor((m) => m.kind === "connected", "alice connected");
  await bob.rec.waitFor((m) => m.kind === "connected", "bob connected");

  await acked("alice", "joinGroup", alice.client.joinGroup("g1"));
  await acked("bob", "joinGroup", bob.client.joinGroup("g1"));

  // Client -> group, text (echoed to the sender: noEcho is false by default).
  await acked("alice", "sendToGroup", alice.client.sendToGroup("g1", "hello", "text"));
  await bob.rec.waitFor(got("bob", "group-message", "hello"), "bob gets hello");
  await alice.rec.waitFor(got("alice", "group-message", "hello"), "alice gets her echo");

  // JSON, not echoed.
  await acked("alice", "sendToGroup", alice.client.sendToGroup("g1", { n: 1 }, "json", { noEcho: true }));
  await bob.rec.waitFor(got("bob", "group-message", { n: 1 }), "bob gets json");

  // Binary, from bob.
  const bytes = new Uint8Array([0, 1, 254, 255]).buffer;
  await acked("bob", "sendToGroup", bob.client.sendToGroup("g1", bytes, "binary"));
  await alice.rec.waitFor(got("alice", "group-message", { base64: "AAH+/w==" }), "alice gets binary");

  // REST sends from the service SDK.
  await service.group("g1").sendToAll("rest-to-group", { contentType: "text/plain" });
  await service.sendToAll({ rest: "all" });
  await service.sendToUser("bob", "rest-to-bob", { contentType: "text/plain" });
  await bob.rec.waitFor(got("bob", "server-message", "rest-to-bob"), "bob gets his REST message");
  await alice.rec.waitFor(got("alice", "server-message", { rest: "all" }), "alice gets REST to all");

  // A user event to the upstream: its reply comes as a server message, then the ack.
  await acked("alice", "sendEvent", alice.client.sendEvent("echo", "question", "text"));
  await alice.rec.waitFor(got("alice", "server-message", "reply:question"), "alice gets the reply");

  // Bob leaves: the next group message reaches alice only.  The REST message to
  // all afterwards is a marker: per-connection order puts anything bob would
  // (wrongly) get from the group before it.
  await acked("bob", "leaveGroup", bob.client.leaveGroup("g1"));
  await service.group("g1").sendToAll("after-leave", { contentType: "text/plain" });
  await service.sendToAll("marker", { contentType: "text/plain" });
  await alice.rec.waitFor(got("alice", "group-message", "after-leave"), "alice gets after-leave");
  await alice.rec.waitFor(got("alice", "server-message", "marker"), "alice gets the marker");
  await bob.rec.waitFor(got("bob", "server-message", "marker"), "bob gets the marker");

  for (const c of [alice, bob]) {
    c.client.stop();
    await c.rec.waitFor((m) => m.kind === "stopped", `${c.name} stopped`);
  }
}, 25000);
