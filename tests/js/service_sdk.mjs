// The service SDK @azure/web-pubsub against the service:
// getClientAccessToken({userId}) yields a URL the service accepts, and
// sendToAll reaches the connected client.  A URL signed with another key is
// refused.
//
//   node service_sdk.mjs <connection string> <hub> <wrong access key>
//
// The client is a raw `ws` connection on json.webpubsub.azure.v1.
// Observations: "token" {url}, "connected" (the system frame), "message"
// (frames), "refused" {status}.

import WebSocket from "ws";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const wrongKey = arg(2, "wrong access key");
const WAIT = 5000;
const PROTOCOL = "json.webpubsub.azure.v1";

run(async () => {
  const service = new WebPubSubServiceClient(connectionString, hub);
  const token = await service.getClientAccessToken({ userId: "node-user" });
  emit("token", { url: token.url, baseUrl: token.baseUrl });

  const ws = new WebSocket(token.url, PROTOCOL);
  const frames = new Recorder();
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    emit(frame.type === "system" ? frame.event : frame.type, { frame });
    frames.push(frame);
  });
  await withTimeout(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), WAIT, "open");
  await frames.waitFor((f) => f.type === "system" && f.event === "connected", "connected frame");

  await service.sendToAll("hello from node", { contentType: "text/plain" });
  await service.sendToAll({ from: "node" });
  await frames.waitFor((f) => f.type === "message" && f.data?.from === "node", "the JSON message");
  ws.close(1000);

  // The same SDK with a key the service does not know: its URL is refused.
  const wrong = connectionString.replace(/AccessKey=[^;]*/, `AccessKey=${wrongKey}`);
  const impostor = new WebPubSubServiceClient(wrong, hub);
  const bad = new WebSocket((await impostor.getClientAccessToken({ userId: "node-user" })).url, PROTOCOL);
  const status = await withTimeout(new Promise((resolve) => {
    bad.once("unexpected-response", (_req, res) => resolve(res.statusCode));
    bad.once("open", () => resolve("open"));
    bad.once("error", () => resolve("error"));
  }), WAIT, "the impostor's handshake");
  emit("refused", { status });
  bad.terminate();
}, 15000);
