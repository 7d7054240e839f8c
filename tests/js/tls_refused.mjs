// Both official JS SDKs against a service whose certificate Node must refuse
// (another CA's, or expired): each call fails with a TLS error, nothing is sent.
//
//   node tls_refused.mjs <connection string> <hub> <client access URL>
//
// Observations: "refused" {what, code} for the service SDK and the client SDK.

import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { WebPubSubClient } from "@azure/web-pubsub-client";
import { arg, emit, run, withTimeout } from "./common.mjs";

const connectionString = arg(0, "connection string");
const hub = arg(1, "hub");
const url = arg(2, "client access URL");
const WAIT = 10000;

function tlsCode(err) {
  // core-rest-pipeline wraps the socket error; ws reports it as is.
  return err?.code ?? err?.cause?.code ?? err?.message;
}

run(async () => {
  const service = new WebPubSubServiceClient(connectionString, hub, { retryOptions: { maxRetries: 0 } });
  try {
    await withTimeout(service.sendToAll("must not arrive", { contentType: "text/plain" }), WAIT, "sendToAll");
    emit("sent", { what: "service" });
  } catch (err) {
    emit("refused", { what: "service", code: tlsCode(err) });
  }

  const errors = [];
  const client = new WebPubSubClient(url, { autoReconnect: false, reconnectRetryOptions: { maxRetries: 0 } });
  client.on("disconnected", (e) => errors.push(e.message));
  try {
    await withTimeout(client.start(), WAIT, "client start");
    emit("sent", { what: "client" });
    client.stop();
  } catch (err) {
    emit("refused", { what: "client", code: tlsCode(err), message: String(err?.message ?? err) });
  }
}, 30000);
