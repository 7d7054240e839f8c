// A minimal ES-module stand-in for Node's `events` package, which is CommonJS and so
// cannot be imported by a browser. @azure/web-pubsub-client 1.1.0's browser build uses
// only `new EventEmitter()`, `on`, `removeListener` and `emit`; these behave as Node's:
// listeners run synchronously, in the order they were added, once per time added.

export class EventEmitter {
  #listeners = new Map();

  on(event, listener) {
    if (typeof listener !== "function") {
      throw new TypeError("The listener must be a function");
    }
    const list = this.#listeners.get(event);
    if (list) {
      list.push(listener);
    } else {
      this.#listeners.set(event, [listener]);
    }
    return this;
  }

  addListener(event, listener) {
    return this.on(event, listener);
  }

  removeListener(event, listener) {
    const list = this.#listeners.get(event);
    const index = list ? list.lastIndexOf(listener) : -1;
    if (index >= 0) {
      list.splice(index, 1);
      if (list.length === 0) {
        this.#listeners.delete(event);
      }
    }
    return this;
  }

  off(event, listener) {
    return this.removeListener(event, listener);
  }

  emit(event, ...args) {
    const list = this.#listeners.get(event);
    if (!list) {
      if (event === "error") {
        throw args[0] instanceof Error ? args[0] : new Error(`Unhandled error: ${args[0]}`);
      }
      return false;
    }
    for (const listener of [...list]) {
      listener.apply(this, args);
    }
    return true;
  }

  listenerCount(event) {
    return this.#listeners.get(event)?.length ?? 0;
  }
}

export default EventEmitter;
