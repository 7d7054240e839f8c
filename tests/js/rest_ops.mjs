// The service SDK @azure/web-pubsub for the REST operations the Python SDK does
// not expose: addConnectionsToGroups / removeConnectionsFromGroups (by OData
// filter), messageTtlSeconds on every send, listConnections with maxPageSize
// (the SDK follows nextLink verbatim), plus sendToAll with a filter.
//
//   node rest_ops.mjs <connection string> <hub> [client host:port,...]
//
// With the third argument the clients connect, in turn, to those nodes of a cluster
// instead of the connection string's (REST calls still go to the connection string's).
//
// Clients are raw `ws` connections on json.webpubsub.azure.v1: alice1, alice2
// (user alice) and bob.  After each step a marker is sent to every client and
// awaited, so the Python side can check exactly what each one received.
// Observations: "connected" {client, connectionId, userId}, "message" {client,
// frame} (every data message, in order), "exists" {group, exists}, "pages"
// {label, pages: [[[connectionId, userId], ...], ...]}, "rejected" {op,
// statusCode, code, message}, "accepted" {op}.

import WebSocket from "ws";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const clientHosts = (process.argv[4] ?? "").split(",").filter((h) => h);
let nextHost = 0;
const WAIT = 5000;
const PROTOCOL = "json.webpubsub.azure.v1";
const TEXT = { contentType: "text/plain" };

const service = new WebPubSubServiceClient(connectionString, hub);

async function connect(name, userId) {
  let { url } = await service.getClientAccessToken({ userId });
  if (clientHosts.length) {
    const target = new URL(url);
    target.host = clientHosts[nextHost++ % clientHosts.length];
    url = target.toString();
  }
  const ws = new WebSocket(url, PROTOCOL);
  const frames = new Recorder();
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    if (frame.type === "message") emit("message", { client: name, frame });
    frames.push(frame);
  });
  await withTimeout(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), WAIT, `${name} open`);
  const connected = await frames.waitFor((f) => f.type === "system" && f.event === "connected", `${name} connected`);
  emit("connected", { client: name, connectionId: connected.connectionId, userId: connected.userId ?? null });
  return { name, ws, frames, id: connected.connectionId };
}

let markers = 0;

/** Every client received all that was sent before: a fresh marker reaches each. */
async function settle(clients) {
  markers += 1;
  const marker = `marker ${markers}`;
  for (const c of clients) await service.sendToConnection(c.id, marker, TEXT);
  for (const c of clients) {
    await c.frames.waitFor((f) => f.type === "message" && f.data === marker, `${c.name}: ${marker}`, WAIT);
  }
}

async function outcome(op, promise) {
  try {
    await promise;
    emit("accepted", { op });
  } catch (err) {
    emit("rejected", { op, statusCode: err.statusCode ?? null, code: err.code ?? null, message: String(err.message) });
  }
}

async function pages(label, group, options) {
  const result = [];
  const iterator = await service.group(group).listConnections(options);
  for await (const page of iterator.byPage()) {
    result.push(page.map((c) => [c.connectionId, c.userId ?? null]));
  }
  emit("pages", { label, pages: result });
}

async function exists(group) {
  emit("exists", { group, exists: await service.groupExists(group) });
}

run(async () => {
  const alice1 = await connect("alice1", "alice");
  const alice2 = await connect("alice2", "alice");
  const bob = await connect("bob", "bob");
  const all = [alice1, alice2, bob];

  // Step 1: alice's connections into ga and gb.
  await service.addConnectionsToGroups(["ga", "gb"], "userId eq 'alice'");
  await exists("ga");
  await service.group("gb").sendToAll("to gb", TEXT);
  await settle(all);
  await pages("ga by 1", "ga", { maxPageSize: 1 });
  await pages("ga top 1", "ga", { maxPageSize: 1, top: 1 });

  // Step 2: alice1 out of ga only.
  await service.removeConnectionsFromGroups(["ga"], `connectionId eq '${alice1.id}'`);
  await service.group("ga").sendToAll("to ga", TEXT);
  await service.group("gb").sendToAll("to gb again", TEXT);
  await settle(all);

  // Step 3: an empty filter selects everyone; then remove by group membership.
  await service.addConnectionsToGroups(["gc"], "");
  await service.group("gc").sendToAll({ to: "gc" });
  await settle(all);
  await service.removeConnectionsFromGroups(["gc"], "'gb' in groups");
  await service.group("gc").sendToAll("gc without gb", TEXT);
  await settle(all);
  await pages("gc", "gc", { maxPageSize: 2 });

  // Step 4: a bad filter is refused and changes nothing.
  await outcome("addConnectionsToGroups(userId eq)", service.addConnectionsToGroups(["gd"], "userId eq"));
  await outcome("removeConnectionsFromGroups(xor)", service.removeConnectionsFromGroups(["gb"], "userId eq 'alice' xor true"));
  await exists("gd");
  await exists("gb");

  // Step 5: messageTtlSeconds on every kind of send, and filters.
  await service.sendToAll("ttl all", { ...TEXT, messageTtlSeconds: 10 });
  await service.sendToUser("bob", "ttl user", { ...TEXT, messageTtlSeconds: 300 });
  await service.group("gb").sendToAll({ ttl: 0 }, { messageTtlSeconds: 0 });
  await service.sendToConnection(alice1.id, "ttl connection", { ...TEXT, messageTtlSeconds: 1 });
  await service.sendToAll("not alice", { ...TEXT, filter: "userId ne 'alice'", messageTtlSeconds: 5 });
  await service.group("gb").sendToAll("gb minus alice1", {
    ...TEXT,
    filter: "userId eq 'alice'",
    excludedConnections: [alice1.id],
  });
  await outcome("sendToAll ttl 1.5", service.sendToAll("never", { ...TEXT, messageTtlSeconds: 1.5 }));
  await outcome("sendToUser ttl 1.5", service.sendToUser("bob", "never", { ...TEXT, messageTtlSeconds: 1.5 }));
  await outcome("sendToAll bad filter", service.sendToAll("never", { ...TEXT, filter: "'gb' in group" }));
  await settle(all);

  // Step 6: names the SDK must escape in the path, and a hub spelled in upper case:
  // each request's token is signed for exactly the URL it sends.
  const weird = "my group/ä?#'()!*~";
  await service.group(weird).addUser("bob");
  await exists(weird);
  await service.group(weird).sendToAll("to weird group", TEXT);
  await new WebPubSubServiceClient(connectionString, hub.toUpperCase()).sendToUser("bob", "upper hub", TEXT);
  await service.group(weird).removeUser("bob");
  await exists(weird);
  await settle(all);

  for (const c of all) c.ws.close(1000);
}, 20000);
