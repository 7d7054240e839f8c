// The application-level keepalive: {"type":"ping"} is answered with
// {"type":"pong"}.
//
//   node keepalive.mjs <connection string> <hub>
//
// 1. Raw `ws` connections (both JSON subprotocols) send {"type":"ping"} and
//    print the frame that answers it ("raw-pong").
// 2. An @azure/web-pubsub-client with its keepalive shortened through its
//    public options (ping every 100 ms, give up after 600 ms without any
//    message) must stay on its first socket while it counts 15 pongs
//    (> 1.5 s, well past the 600 ms idle timeout).  The pongs and a close are
//    observed with extra listeners on the client's `ws` socket (private field
//    `_wsClient._socket`; read only, the SDK's own handlers are untouched).
//    Observations: "sdk-pongs" {count, sameSocket, closes, disconnected}.

import WebSocket from "ws";
import { WebPubSubClient } from "@azure/web-pubsub-client";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { Recorder, arg, emit, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const WAIT = 5000;
const PONGS = 15;

const service = new WebPubSubServiceClient(connectionString, hub);

async function rawPing(subprotocol) {
  const { url } = await service.getClientAccessToken({ userId: "raw" });
  const ws = new WebSocket(url, subprotocol);
  const frames = new Recorder();
  ws.on("message", (data) => frames.push(JSON.parse(data.toString())));
  ws.on("close", (code) => frames.push({ closed: code }));
  await withTimeout(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), WAIT, "raw open");
  await frames.waitFor((f) => f.type === "system" && f.event === "connected", "raw connected");
  const before = frames.items.length;
  ws.send(JSON.stringify({ type: "ping" }));
  await frames.waitFor((f) => frames.items.indexOf(f) >= before, "a frame answering the ping");
  emit("raw-pong", { subprotocol: ws.protocol, frame: frames.items[before] });
  ws.close(1000);
}

run(async () => {
  await rawPing("json.webpubsub.azure.v1");
  await rawPing("json.reliable.webpubsub.azure.v1");

  const client = new WebPubSubClient(
    { getClientAccessUrl: async () => (await service.getClientAccessToken({ userId: "idle" })).url },
    { keepAliveIntervalInMs: 100, keepAliveTimeoutInMs: 600 },
  );
  let disconnected = 0;
  client.on("disconnected", () => {
    disconnected += 1;
  });
  await withTimeout(client.start(), WAIT, "client start");
  const socket = client._wsClient?._socket;
  if (!(socket instanceof WebSocket)) throw new Error("the client's ws socket was not found");
  const pongs = new Recorder();
  let closes = 0;
  socket.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    if (frame.type === "pong") pongs.push(frame);
  });
  socket.on("close", () => {
    closes += 1;
  });
  try {
    await pongs.waitFor(() => pongs.items.length >= PONGS, `${PONGS} pongs`, 10000);
  } finally {
    emit("sdk-pongs", {
      count: pongs.items.length,
      sameSocket: client._wsClient?._socket === socket,
      closes,
      disconnected,
    });
    client.stop();
  }
}, 20000);
