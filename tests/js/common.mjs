// Shared helpers of the Node scripts run by tests/integration/test_js_clients.py.
//
// Every script prints one JSON object per line on stdout ("kind" says what was
// observed), ends with {"kind":"done"} and exit code 0, or with
// {"kind":"error",...} and a non-zero exit code.  Nothing here sleeps: waits are
// on events, each with its own timeout, and the whole script has a deadline.

import { Buffer } from "node:buffer";

/** Print one observation. */
export function emit(kind, fields = {}) {
  process.stdout.write(JSON.stringify({ kind, ...fields }) + "\n");
}

/** Message data as JSON: ArrayBuffers (binary) become {base64: ...}. */
export function plain(data) {
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return { base64: Buffer.from(data instanceof ArrayBuffer ? data : data.buffer).toString("base64") };
  }
  return data;
}

/**
 * Run `main` with an overall deadline; exit 0 when it resolves, 1 when it
 * throws, 2 when the deadline passes.
 */
export function run(main, deadlineMs = 20000) {
  const timer = setTimeout(() => {
    emit("error", { message: `overall deadline of ${deadlineMs} ms passed` });
    process.exit(2);
  }, deadlineMs);
  main().then(
    () => {
      clearTimeout(timer);
      emit("done");
      process.exit(0);
    },
    (err) => {
      clearTimeout(timer);
      emit("error", { message: String(err?.message ?? err), name: err?.name, stack: err?.stack });
      process.exit(1);
    },
  );
}

/** Reject after `ms` unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Collects items (e.g. received messages) and lets a script wait until one
 * matching a predicate has arrived (earlier arrivals count).
 */
export class Recorder {
  constructor() {
    this.items = [];
    this._waiters = [];
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this._waiters]) {
      if (w.pred(item)) {
        this._waiters.splice(this._waiters.indexOf(w), 1);
        w.resolve(item);
      }
    }
  }

  waitFor(pred, what, ms = 5000) {
    const found = this.items.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    const waiter = { pred };
    const promise = new Promise((resolve) => {
      waiter.resolve = resolve;
    });
    this._waiters.push(waiter);
    return withTimeout(promise, ms, what).finally(() => {
      const i = this._waiters.indexOf(waiter);
      if (i >= 0) this._waiters.splice(i, 1);
    });
  }
}

/** Required positional argument `index` (after the script name). */
export function arg(index, name) {
  const value = process.argv[2 + index];
  if (value === undefined || value === "") {
    emit("error", { message: `missing argument ${index + 1}: ${name}` });
    process.exit(64);
  }
  return value;
}
