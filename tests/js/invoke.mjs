// @azure/web-pubsub-client's invokeEvent against the service and a real handler:
// a JSON and a text answer, a handler failure, and an invocation aborted with an
// AbortSignal while the handler holds it (the service then tells the script, by a
// sendToAll "abort-now", that the handler has the request; the script aborts), and a
// transport dropped while the handler holds "hang2" (told by "drop-now").
//
//   node invoke.mjs <connection string> <hub> [<port>:<proxy port>]
//
// With the third argument the client connects through a proxy (the port of its URL
// replaced): the test makes it send the recovery to another node.
//
// The hub's upstream answers "add" with JSON {"sum": a + b}, "echo" with text,
// fails "fail" with 500 and holds "hang" and "hang2" until the test ends.
// Observations: connected, result, failure, aborted, after-abort, lost, after-drop.

import { WebPubSubClient } from "@azure/web-pubsub-client";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, plain, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const WAIT = 5000;

// Plain HTTP on 127.0.0.1 (the test serves no TLS): the SDK must be told.
const service = new WebPubSubServiceClient(connectionString, hub, { allowInsecureConnection: true });

run(async () => {
  const client = new WebPubSubClient({
    getClientAccessUrl: async () => {
      const { url } = await service.getClientAccessToken({ userId: "alice" });
      const via = process.argv[4];
      if (via == null) return url;
      const [port, proxyPort] = via.split(":");
      return url.replace(`:${port}/`, `:${proxyPort}/`);
    },
  });
  const rec = new Recorder();
  client.on("connected", (e) => {
    emit("connected", { connectionId: e.connectionId });
    rec.push({ kind: "connected" });
  });
  client.on("server-message", (e) => rec.push({ kind: "server-message", data: plain(e.message.data) }));
  await withTimeout(client.start(), WAIT, "start");
  await rec.waitFor((m) => m.kind === "connected", "connected");

  const sum = await withTimeout(client.invokeEvent("add", { a: 1, b: 2 }, "json"), WAIT, "add");
  emit("result", { event: "add", invocationId: sum.invocationId, dataType: sum.dataType, data: plain(sum.data) });
  const echo = await withTimeout(client.invokeEvent("echo", "hi", "text"), WAIT, "echo");
  emit("result", { event: "echo", invocationId: echo.invocationId, dataType: echo.dataType, data: plain(echo.data) });

  try {
    await withTimeout(client.invokeEvent("fail", "x", "text"), WAIT, "fail");
    emit("result", { event: "fail" });
  } catch (err) {
    emit("failure", { event: "fail", name: err.name, message: err.message, errorDetail: err.errorDetail ?? null });
  }

  const controller = new AbortController();
  const hanging = client.invokeEvent("hang", "x", "text", { abortSignal: controller.signal });
  await rec.waitFor((m) => m.kind === "server-message" && m.data === "abort-now", "abort-now");
  controller.abort();
  try {
    await withTimeout(hanging, WAIT, "hang");
    emit("result", { event: "hang" });
  } catch (err) {
    emit("aborted", { event: "hang", name: err.name, message: err.message });
  }
  // The connection goes on: the next invocation is answered (not stuck behind "hang").
  const after = await withTimeout(client.invokeEvent("echo", "after", "text"), WAIT, "after abort");
  emit("after-abort", { dataType: after.dataType, data: plain(after.data) });

  // The transport drops (no close frame) while the handler holds "hang2": the client
  // fails that invocation and recovers its connection; the next invocation is answered.
  const connectionId = client._connectionId;
  const held = client.invokeEvent("hang2", "x", "text");
  await rec.waitFor((m) => m.kind === "server-message" && m.data === "drop-now", "drop-now");
  client._wsClient._socket.terminate();
  try {
    await withTimeout(held, WAIT, "hang2");
    emit("result", { event: "hang2" });
  } catch (err) {
    emit("lost", { name: err.name, message: err.message });
  }
  await service.sendToAll("back", { contentType: "text/plain" }); // replayed on recovery
  await rec.waitFor((m) => m.kind === "server-message" && m.data === "back", "back", WAIT);
  const again = await withTimeout(client.invokeEvent("echo", "again", "text"), WAIT, "after drop");
  emit("after-drop", { data: plain(again.data), sameConnectionId: client._connectionId === connectionId });
  client.stop();
});
