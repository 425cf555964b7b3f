/* Stand-ins for what the protocol code takes from the browser: a clock with timers, WebSockets, storage. */

import { ChatSocket } from '../../chat/static/protocol.js';

/** Time that moves only when told: timers run in due order as `advance` passes them. */
export class FakeClock {
  time = 1_000_000;
  #timers = new Map(); // id -> {fn, at, every}
  #ids = 0;

  now = () => this.time;

  setTimeout = (fn, ms) => this.#add(fn, ms, null);

  setInterval = (fn, ms) => this.#add(fn, ms, ms);

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  clearInterval = (id) => {
    this.#timers.delete(id);
  };

  /** Move time on by `ms`, running every timer that falls due on the way, in order. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let due = null;
      for (const [id, timer] of this.#timers) {
        if (timer.at <= end && (!due || timer.at < due[1].at)) due = [id, timer];
      }
      if (!due) break;
      const [id, timer] = due;
      this.time = timer.at;
      if (timer.every == null) this.#timers.delete(id); else timer.at += timer.every;
      timer.fn();
    }
    this.time = end;
  }

  #add(fn, ms, every) {
    this.#ids += 1;
    this.#timers.set(this.#ids, { fn, at: this.time + Math.max(0, ms || 0), every });
    return this.#ids;
  }
}

/** A WebSocket class whose instances land in `sockets`; the test opens, feeds and drops them. */
export function fakeWebSocket(sockets) {
  return class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.listeners = { open: [], message: [], close: [] };
      sockets.push(this);
    }

    addEventListener(type, fn) {
      this.listeners[type].push(fn);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error(`send on a socket in state ${this.readyState}`);
      this.sent.push(data);
    }

    close(code) {
      this.closedWith = code;
      this.readyState = 2;
    }

    // --- the server's side ---

    open() {
      this.readyState = 1;
      for (const fn of this.listeners.open) fn({});
    }

    /** Open, and say hello as the server does first. */
    greet(you = ANN) {
      this.open();
      this.receive({ type: 'hello', you });
    }

    /** One WebSocket message: an object is sent as JSON, a string as it is. */
    receive(frame) {
      const data = typeof frame === 'string' || frame instanceof ArrayBuffer ? frame : JSON.stringify(frame);
      for (const fn of this.listeners.message) fn({ data });
    }

    drop(code, reason = '') {
      this.readyState = 3;
      for (const fn of this.listeners.close) fn({ code, reason });
    }

    /** The frames the client sent, parsed. */
    frames() {
      return this.sent.map((data) => JSON.parse(data));
    }

    /** The frames the client sent, but its joins. */
    said() {
      return this.frames().filter((frame) => frame.type !== 'join');
    }

    /** The join frames the client sent, by room: the last one for each. */
    joins() {
      return Object.fromEntries(this.frames().filter((frame) => frame.type === 'join').map((frame) => [frame.room, frame]));
    }

    query() {
      return Object.fromEntries(new URL(this.url).searchParams);
    }
  };
}

export class MemoryStorage {
  items = new Map();

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

/** Let every promise already settled run its callbacks (the health probe's answer). */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A ChatSocket on fakes with one room on it (`client`, default `lobby`), and what they did; `room(name)`
 * adds another. `options`: random (a number, the jitter's draw), online, reachable (what the health
 * probe answers), storage, room, name.
 */
export function harness(options = {}) {
  const clock = new FakeClock();
  const sockets = [];
  const storage = options.storage || new MemoryStorage();
  const counters = new Map();
  const environment = { online: options.online ?? true, reachable: options.reachable ?? false };
  const chat = new ChatSocket({
    name: options.name || 'Ann',
    base: new URL('http://chat.test/chat/'),
    WebSocket: fakeWebSocket(sockets),
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    setInterval: clock.setInterval,
    clearInterval: clock.clearInterval,
    now: clock.now,
    random: () => options.random ?? 0,
    online: () => environment.online,
    probe: () => Promise.resolve(environment.reachable),
    storage,
    nextRef: (prefix) => {
      counters.set(prefix, (counters.get(prefix) || 0) + 1);
      return `${prefix}${counters.get(prefix)}`;
    },
  });

  /** Another room on the socket, not joined yet: its client and what it told its listener. */
  const room = (name) => {
    const events = [];
    const listener = new Proxy({}, {
      get: (_, kind) => (client, detail) => events.push({ kind, detail }),
    });
    return {
      client: chat.room(name, listener),
      events,
      /** The events of one kind, their details. */
      eventsOf: (kind) => events.filter((event) => event.kind === kind).map((event) => event.detail),
    };
  };

  const first = room(options.room || 'lobby');
  return {
    chat,
    room,
    client: first.client,
    events: first.events,
    eventsOf: first.eventsOf,
    clock,
    sockets,
    storage,
    environment,
    /** The socket the page opened last. */
    get socket() {
      return sockets[sockets.length - 1];
    },
  };
}

export const ANN = { id: 'a1', name: 'Ann' };
export const BOB = { id: 'b1', name: 'Bob' };

export function message(seq, from = BOB, text = `text ${seq}`, room = 'lobby') {
  return { type: 'message', room, seq, from, text, ts: 1_700_000_000_000 + seq };
}

export function welcome(fields = {}) {
  const history = fields.history || [];
  return {
    type: 'welcome',
    room: 'lobby',
    you: ANN,
    members: [ANN, BOB],
    seq: history.length ? history[history.length - 1].seq : 0,
    epoch: 'E1',
    recovered: false,
    history,
    ...fields,
  };
}

/** Join `client`'s room (`h.client` unless given), the socket live first: the room is live. */
export function join(h, fields = {}, client = h.client) {
  client.connect();
  if (!h.chat.live) h.socket.greet();
  const room = fields.room || client.room;
  const { ref } = h.socket.joins()[room];
  h.socket.receive(welcome({ room, ref, ...fields }));
  return h.socket;
}

/** After a drop: the next socket opens, says hello and welcomes the room back (recovered unless told). */
export function rejoin(h, fields = {}) {
  h.clock.advance(Math.max(0, h.chat.retryAt - h.clock.now()));
  h.socket.greet();
  h.socket.receive(welcome({ recovered: true, ...fields }));
  return h.socket;
}

/** Messages with these seqs, from Bob. */
export const messages = (...seqs) => seqs.map((seq) => message(seq));
