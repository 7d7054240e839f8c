// @azure/web-pubsub-client's group streams against the service: openGroupStream on
// two publishers at once, onGroupStream on a reliable and a plain JSON subscriber, a
// publisher whose transport drops mid-stream (reliable recovery: nothing lost, nothing
// twice), an idle stream timed out by the service, a stream aborted with an
// application error, and a start refused for want of permission.
//
//   node streams.mjs <connection string> <hub> [<port>:<proxy port>]
//
// With the third argument the publisher "alice" connects through a proxy (the port of
// her URL replaced): the test makes it send her reconnection to another node.
//
// Observations: stream (a subscriber's complete stream: chunks, error), group-message
// (the stream metadata a plain group-message callback sees), publisher-error,
// forbidden, dropped.

import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, plain, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const via = process.argv[4]; // "<port>:<proxy port>", or none
const WAIT = 8000;
const GROUP = "room";
const ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"];

const service = new WebPubSubServiceClient(connectionString, hub, { allowInsecureConnection: true });

function client(userId, roles = ROLES, options = {}, proxied = false) {
  const url = async () => {
    const { url } = await service.getClientAccessToken({ userId, roles });
    if (!proxied || via == null) return url;
    const [port, proxyPort] = via.split(":");
    return url.replace(`:${port}/`, `:${proxyPort}/`);
  };
  return new WebPubSubClient({ getClientAccessUrl: url }, options);
}

/** Every stream `sub` sees, complete (or failed), as one observation each. */
function collect(sub, label, rec) {
  sub.onGroupStream(async (stream) => {
    const chunks = [];
    let error = null;
    try {
      for await (const m of stream) chunks.push(plain(m.data));
    } catch (err) {
      error = { name: err.name, message: err.message ?? null, userErrorCode: err.userErrorCode ?? null };
    }
    const seen = { at: label, streamId: stream.streamId, group: stream.groupName, chunks, error };
    emit("stream", seen);
    rec.push(seen);
  });
}

run(async () => {
  const rec = new Recorder();
  const alice = client("alice", ROLES, {}, true);
  const bob = client("bob");
  const carol = client("carol"); // reliable (the default protocol)
  const dave = client("dave", ROLES, { protocol: WebPubSubJsonProtocol() });
  const eve = client("eve", ["webpubsub.joinLeaveGroup"]); // may not send to the group
  for (const c of [alice, bob, carol, dave, eve]) await withTimeout(c.start(), WAIT, "start");
  collect(carol, "carol", rec);
  collect(dave, "dave", rec);
  let metadata = null;
  carol.on("group-message", (e) => {
    if (metadata === null && e.message.stream != null) {
      metadata = e.message.stream;
      emit("group-message", { stream: metadata, fromUserId: e.message.fromUserId });
    }
  });
  await withTimeout(carol.joinGroup(GROUP), WAIT, "join carol");
  await withTimeout(dave.joinGroup(GROUP), WAIT, "join dave");

  // Two publishers at once, their fragments interleaved.
  const a = await withTimeout(alice.openGroupStream(GROUP, { streamId: "alice-1" }), WAIT, "open a");
  const b = await withTimeout(bob.openGroupStream(GROUP, { streamId: "bob-1" }), WAIT, "open b");
  for (let i = 1; i <= 5; i++) {
    await a.write(`a${i}`, "text");
    await b.write({ n: i }, "json");
  }
  await b.write(new Uint8Array([1, 2, 3]).buffer, "binary");
  await withTimeout(a.end(), WAIT, "end a");
  await withTimeout(b.end(), WAIT, "end b");
  for (const at of ["carol", "dave"]) {
    for (const id of ["alice-1", "bob-1"]) {
      await rec.waitFor((s) => s.at === at && s.streamId === id, `${at} ${id}`, WAIT);
    }
  }

  // The publisher's transport drops mid-stream; its client recovers and goes on.
  const connectionId = alice._connectionId;
  const d = await withTimeout(alice.openGroupStream(GROUP, { streamId: "alice-drop" }), WAIT, "open d");
  for (let i = 1; i <= 3; i++) await d.write(`d${i}`, "text");
  alice._wsClient._socket.terminate();
  for (let i = 4; i <= 6; i++) await withTimeout(d.write(`d${i}`, "text"), WAIT, `write d${i}`);
  await withTimeout(d.end(), WAIT, "end d");
  emit("dropped", { sameConnectionId: alice._connectionId === connectionId });
  await rec.waitFor((s) => s.at === "carol" && s.streamId === "alice-drop", "carol drop", WAIT);
  await rec.waitFor((s) => s.at === "dave" && s.streamId === "alice-drop", "dave drop", WAIT);

  // An idle stream: the service ends it after its timeout.
  const idle = await withTimeout(
    bob.openGroupStream(GROUP, { streamId: "bob-idle", idleTimeoutInMs: 300 }),
    WAIT,
    "open idle",
  );
  const idleError = new Promise((resolve) => idle.onError(resolve));
  await idle.write("only", "text");
  const err = await withTimeout(idleError, WAIT, "idle error");
  emit("publisher-error", { streamId: "bob-idle", name: err.name, message: err.message });
  await rec.waitFor((s) => s.at === "carol" && s.streamId === "bob-idle", "carol idle", WAIT);

  // Aborted by its publisher with an application error.
  const ab = await withTimeout(bob.openGroupStream(GROUP, { streamId: "bob-abort" }), WAIT, "open abort");
  await ab.write("partial", "text");
  await withTimeout(ab.abort({ message: "the source failed", userErrorCode: "E42" }), WAIT, "abort");
  await rec.waitFor((s) => s.at === "carol" && s.streamId === "bob-abort", "carol abort", WAIT);

  // No permission to send to the group: the start is refused.
  try {
    await withTimeout(eve.openGroupStream(GROUP, { streamId: "eve-1" }), WAIT, "open eve");
    emit("forbidden", { refused: false });
  } catch (e) {
    emit("forbidden", { refused: true, name: e.name, message: e.message });
  }
  for (const c of [alice, bob, carol, dave, eve]) c.stop();
}, 40000);
