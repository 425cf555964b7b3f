/* The chat protocol (v1.1, see the README) as the web client speaks it: every room over one WebSocket. No DOM here.
 *
 * A ChatSocket is the page's one connection to `/ws`: it waits for the server's hello, pings when
 * the line goes quiet, routes each frame to its room, and after a drop reconnects (exponential
 * backoff with jitter) and has every room join again. A RoomClient is one joined room and what it
 * knows: it keeps the last seq it saw and the epoch from its welcome and rejoins with both, so the
 * server sends exactly what was missed; messages are deduplicated and ordered by seq, acks matched
 * by ref. Each tells a listener what changed and never touches the page.
 *
 * Everything they take from the browser (WebSocket, timers, clock, randomness, session storage,
 * the health probe, whether the network is up) is a dependency with the browser's as default, so
 * they run, and are tested, anywhere.
 */

export const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const CONTROL_RE = /[\p{Cc}\p{Zl}\p{Zp}]/u;
export const NAME_MAX = 32;
export const TYPING_EVERY_MS = 2000; // send `typing` at most this often
export const TYPING_SHOW_MS = 4000; // show someone as typing this long after their last `typing`
export const HISTORY_PAGE = 50;
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 15000;
export const HEARTBEAT_CHECK_MS = 5000; // how often the heartbeat looks at the silence
export const HEARTBEAT_MS = 25000; // ping when nothing arrived for this long
export const HEARTBEAT_TIMEOUT_MS = 10000; // and give the socket up when the pong does not come
export const JOIN_TIMEOUT_MS = 10000; // a connection without its hello by then is given up, a join without its welcome asked again
export const MAX_FRAME_BYTES = 60000; // below the server's 64 KiB frame limit (which closes the socket)
const PROBE_TIMEOUT_MS = 4000;
const OPEN = 1; // WebSocket.OPEN

// --- pure rules ------------------------------------------------------------------------------------

export const chars = (text) => [...text].length;
const utf8Length = (text) => new TextEncoder().encode(text).length;

/** [name, ''] for a valid display name (trimmed), or [null, why not]. */
export function validateName(raw) {
  const name = (raw || '').trim();
  if (!name) return [null, 'Pick a name.'];
  if (chars(name) > NAME_MAX) return [null, `Use at most ${NAME_MAX} characters.`];
  if (CONTROL_RE.test(name)) return [null, 'Control characters are not allowed.'];
  return [name, ''];
}

/** [room, ''] for a valid room name (trimmed, a leading # dropped), or [null, why not]. */
export function validateRoom(raw) {
  const room = (raw || '').trim().replace(/^#/, '');
  if (!room) return [null, 'Pick a room.'];
  if (!ROOM_RE.test(room)) {
    return [null, 'Use up to 64 letters, digits, "_", "." or "-", starting with a letter or digit.'];
  }
  return [room, ''];
}

/** Exponential backoff with jitter: half the step plus a random part of the other half. */
export function backoff(attempt, random = Math.random) {
  const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return step / 2 + random() * (step / 2);
}

/** How long to wait before attempt `attempt` + 1, after a close with `code`; `soon`: the server answers. */
export function retryDelay(attempt, code, soon, random = Math.random) {
  let delay = backoff(attempt, random);
  if (code === 1012 && attempt === 0) delay = 150 + random() * 600; // restarting: come back soon
  if (code === 1013) delay = Math.max(delay, 2000 + random() * 2000); // busy: give it air
  if (soon) delay = Math.min(delay, 300 + random() * 300);
  return delay;
}

/** The page's WebSocket address under `base` (where the app is mounted): one for every room. */
export function socketUrl(base, name) {
  const url = new URL('ws', base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('name', name);
  return url.href;
}

/** Whether the server under `base` answers HTTP at all (any status): its /healthz within 4 s. */
export async function reachable(base) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), PROBE_TIMEOUT_MS);
  try {
    await fetch(new URL('healthz', base), { cache: 'no-store', signal: controller.signal });
    return true;
  } catch (_) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

let refs = 0;

/** A ref unique in this page: refs match acks, errors and history answers to what asked for them. */
export function nextRef(prefix) {
  refs += 1;
  return `${prefix}${refs}`;
}

const sessionStore = {
  getItem: (key) => sessionStorage.getItem(key),
  setItem: (key, value) => sessionStorage.setItem(key, value),
};

/** Why a refused join does not retry by itself, by the error code that refused it. */
const REFUSALS = {
  forbidden: 'The server refused to let you join this room.',
  too_many_rooms: 'You are in too many rooms at once: leave one, then try again.',
};

// --- the connection --------------------------------------------------------------------------------

/**
 * The page's one WebSocket, shared by every room.
 *
 * `new ChatSocket({base, name, ...dependencies})`, then `room(name, listener)` for each room, and the
 * room's `connect()` to join it. The socket connects when a room first wants it, and closes when the
 * last room is left.
 *
 * State to read: status ('idle', 'connecting', 'live', 'waiting', 'offline', 'refused'), detail,
 * retryAt, live (the hello came), me (who the hello says we are), name. The rooms show it.
 */
export class ChatSocket {
  #deps;
  #ws = null;
  #opened = false;
  #attempts = 0;
  #reachableFailures = 0;
  #retryTimer = null;
  #helloTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #lastFrameAt = 0;
  #rooms = new Map(); // room name -> RoomClient

  constructor({ name = '', base, ...dependencies }) {
    this.name = name;
    this.base = base;
    this.#deps = {
      WebSocket: globalThis.WebSocket,
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (id) => clearTimeout(id),
      setInterval: (fn, ms) => setInterval(fn, ms),
      clearInterval: (id) => clearInterval(id),
      now: () => Date.now(),
      random: () => Math.random(),
      online: () => globalThis.navigator?.onLine !== false,
      probe: () => reachable(base),
      storage: sessionStore,
      nextRef,
      ...dependencies,
    };
    this.status = 'idle';
    this.detail = '';
    this.retryAt = 0;
    this.live = false;
    this.me = null;
  }

  /** The address the next connection uses. */
  url() {
    return socketUrl(this.base, this.name);
  }

  /** A room on this socket, not joined until its `connect()`. */
  room(name, listener = {}) {
    const client = new RoomClient(name, { socket: this, listener, ...this.#deps });
    this.#rooms.set(name, client);
    return client;
  }

  /** Open a new connection now (closing the current one, if any). */
  connect() {
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#detach();
    const ws = new this.#deps.WebSocket(this.url());
    this.#ws = ws;
    this.#opened = false;
    ws.addEventListener('open', () => {
      if (ws === this.#ws) this.#opened = true;
    });
    ws.addEventListener('message', (event) => {
      if (ws !== this.#ws || typeof event.data !== 'string') return;
      this.#lastFrameAt = this.#deps.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (frame && typeof frame === 'object') this.#onFrame(frame);
    });
    ws.addEventListener('close', (event) => {
      if (ws === this.#ws) this.#closed(event.code, event.reason);
    });
    this.#helloTimer = this.#deps.setTimeout(() => {
      if (ws === this.#ws && !this.live) this.#closed(1006, 'no hello');
    }, JOIN_TIMEOUT_MS);
    this.#setStatus('connecting');
  }

  /** Connect unless connected, connecting or refused (a room wants to join). */
  wake() {
    if (this.status === 'idle' || this.status === 'waiting' || this.status === 'offline') this.connect();
  }

  /** Forget the waits and connect at once (the person pressed "Retry now" or "Try again"). */
  retryNow() {
    this.#attempts = 0;
    this.#reachableFailures = 0;
    this.connect();
  }

  /** Be someone else from now on: every room rejoins under the new name, recovering what was missed meanwhile. */
  rename(name) {
    if (name === this.name) return;
    this.name = name;
    if (this.status !== 'idle') this.connect();
  }

  /** Send a frame now; false when there is no live connection to send it on. */
  send(frame) {
    if (!this.live || !this.#ws) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  /** A room joined: the connection works, so the next drop starts the backoff over. */
  welcomed() {
    this.#attempts = 0;
    this.#reachableFailures = 0;
  }

  /** A room left for good: no more frames for it; without rooms the connection closes. */
  forget(room) {
    if (this.#rooms.get(room.room) === room) this.#rooms.delete(room.room);
    if (this.#rooms.size) return;
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#detach();
    this.#setStatus('idle');
  }

  /** Forget the socket (its late events are ignored) and close it; the rooms are no longer joined. */
  #detach() {
    const ws = this.#ws;
    this.#ws = null;
    this.live = false;
    this.#deps.clearTimeout(this.#helloTimer);
    this.#stopHeartbeat();
    if (!ws) return;
    if (ws.readyState <= OPEN) {
      try {
        ws.close(1000);
      } catch (_) { /* already closing */ }
    }
    for (const room of this.#rooms.values()) room.socketClosed();
  }

  #closed(code, reason) {
    const opened = this.#opened;
    const greeted = this.live;
    this.#detach();
    if (!this.#rooms.size) {
      this.#setStatus('idle');
      return;
    }
    if (code === 1008 && !greeted) {
      this.#refuse(reason || 'The server refused the connection.');
      return;
    }
    if (!opened) {
      // The handshake failed: either the server is away, or it answered 403 (which a browser cannot
      // read). Ask /healthz: twice refused while the server answers means the connection itself is refused.
      this.#deps.probe().then((answers) => {
        if (this.#ws || !this.#rooms.size || this.status === 'idle') return;
        this.#reachableFailures = answers ? this.#reachableFailures + 1 : 0;
        if (this.#reachableFailures >= 2) {
          this.#refuse('The server refused the connection with this name.');
        } else {
          this.#retryLater(code, answers);
        }
      });
      this.#setStatus('connecting'); // until the probe answers: the rooms show that they are on their way back
      return;
    }
    this.#reachableFailures = 0;
    this.#retryLater(code, false);
  }

  #retryLater(code, soon) {
    const delay = retryDelay(this.#attempts, code, soon, this.#deps.random);
    this.#attempts += 1;
    this.retryAt = this.#deps.now() + delay;
    this.#retryTimer = this.#deps.setTimeout(() => this.connect(), delay);
    this.#setStatus(this.#deps.online() ? 'waiting' : 'offline');
  }

  #refuse(detail) {
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#setStatus('refused', detail);
  }

  #setStatus(status, detail = '') {
    this.status = status;
    this.detail = detail;
    for (const room of this.#rooms.values()) room.socketChanged();
  }

  #startHeartbeat() {
    const { now, setTimeout } = this.#deps;
    this.#stopHeartbeat();
    this.#pingTimer = this.#deps.setInterval(() => {
      // One ping at a time: pinging again would restart the wait for the answer, which then never ends.
      if (!this.live || this.#pongTimer != null || now() - this.#lastFrameAt < HEARTBEAT_MS) return;
      const sentAt = now();
      this.send({ type: 'ping', ref: this.#deps.nextRef('p') });
      this.#pongTimer = setTimeout(() => {
        this.#pongTimer = null;
        if (this.live && this.#lastFrameAt < sentAt) this.#closed(1006, 'no answer to ping');
      }, HEARTBEAT_TIMEOUT_MS);
    }, HEARTBEAT_CHECK_MS);
  }

  #stopHeartbeat() {
    this.#deps.clearInterval(this.#pingTimer);
    this.#deps.clearTimeout(this.#pongTimer);
    this.#pingTimer = this.#pongTimer = null;
  }

  // --- frames from the server ----------------------------------------------------------------------

  #onFrame(frame) {
    if (frame.type === 'hello') return this.#onHello(frame);
    if (typeof frame.room === 'string') {
      const room = this.#rooms.get(frame.room);
      if (room) room.receive(frame);
      return undefined;
    }
    if (frame.type === 'error' || frame.type === 'ack') return this.#unrouted(frame);
    return undefined; // pong, and whatever later versions add
  }

  #onHello(frame) {
    if (this.live) return;
    this.#deps.clearTimeout(this.#helloTimer);
    this.live = true;
    this.me = frame.you || null;
    this.#lastFrameAt = this.#deps.now();
    this.#startHeartbeat();
    this.#setStatus('live');
    for (const room of [...this.#rooms.values()]) room.socketLive();
  }

  /** An error or ack that names no room: to the room whose request it answers; an error answering none, to every room. */
  #unrouted(frame) {
    const rooms = [...this.#rooms.values()];
    if (frame.ref == null) {
      if (frame.type === 'error') for (const room of rooms) room.receive(frame);
      return;
    }
    const owner = rooms.find((room) => room.asked(frame.ref));
    if (owner) owner.receive(frame); // else it answers a ping
  }
}

// --- one room --------------------------------------------------------------------------------------

/**
 * One room on the page's ChatSocket (made by `socket.room(name, listener)`).
 *
 * `connect()` joins it (now, or as soon as the socket is live), `leave()` leaves it for good. The
 * listener's methods (each optional, each called with the client first) say what changed, once the
 * client's state is consistent again:
 *   status()                            status, detail, retryAt, live or the paging state
 *   welcome({rejoining, recovered, inserted})  joined, now live; unless recovered, the messages were reset
 *   message({message, before, mine})    one new message, to go before seq `before` (null: at the end)
 *   history({inserted, paged})          older messages (`paged`: the page asked for by loadOlder)
 *   members()                           someone joined or left
 *   typing()                            who is typing changed
 *   outbox()                            the messages being sent changed
 *   paging()                            a page of older messages was asked for
 *   error({code, detail, pending, historyFailed})  an error frame; `pending` is the message it refused
 * `inserted` lists {message, before} in the order to insert them.
 *
 * State to read: status ('connecting', 'reconnecting', 'live', 'waiting', 'offline', 'refused'; the
 * socket's while it is down or refused), detail, retryAt, live, me, members (id -> member), epoch,
 * lastSeq, seqs (held, ascending), noMore (nothing older to load), loadingOlder, pending (the outbox,
 * oldest first).
 */
export class RoomClient {
  #deps;
  #socket;
  #listener;
  // 'new' (not asked to join), 'pending' (joins when the socket is live), 'joining' (join sent),
  // 'live', 'waiting' (joins again when its timer is up), 'refused' (by this room), 'left'
  #state = 'new';
  #joinRef = null; // the ref of the join sent last on this connection
  #joinSent = false; // a join went out on this connection and was not refused: the server may hold us
  #attempts = 0;
  #retryTimer = null;
  #joinTimer = null;
  #retryAt = 0;
  #refusal = '';
  #held = new Set();
  #historyRef = null;
  #myIds;
  #typing = new Map(); // member id -> {name, until}
  #typingTimer = null;
  #typingSendTimer = null;
  #lastTypingSent = 0;
  #lastInputAt = 0;

  constructor(room, { socket, listener = {}, ...dependencies }) {
    this.room = room;
    this.#socket = socket;
    this.#listener = listener;
    this.#deps = dependencies;
    this.status = 'connecting';
    this.detail = '';
    this.retryAt = 0;
    this.live = false;
    this.me = null;
    this.members = new Map();
    this.epoch = null;
    this.lastSeq = 0;
    this.seqs = [];
    this.noMore = false;
    this.pending = [];
    this.#myIds = this.#loadMyIds();
  }

  get loadingOlder() {
    return this.#historyRef != null;
  }

  /** The join frame the next join sends: with `since`/`epoch` once the room was joined before. */
  #joinFrame() {
    const frame = { type: 'join', room: this.room };
    if (this.epoch) {
      frame.since = this.lastSeq;
      frame.epoch = this.epoch;
    }
    return frame;
  }

  // --- joining -------------------------------------------------------------------------------------

  /** Join now, or as soon as the socket is live (also: join at once a room waiting to join again). */
  connect() {
    if (this.#state === 'live' || this.#state === 'joining' || this.#state === 'left') return;
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#state = 'pending';
    if (this.#socket.live) this.#join(); else this.#socket.wake();
    this.#refresh();
  }

  /** Forget the waits and join at once (the person pressed "Retry now" or "Try again"). */
  retryNow() {
    if (this.#state === 'left') return;
    this.#attempts = 0;
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#state !== 'live' && this.#state !== 'joining') this.#state = 'pending';
    if (this.#socket.live) {
      if (this.#state === 'pending') this.#join();
      this.#refresh();
    } else {
      this.#socket.retryNow();
    }
  }

  /** Leave the room for good: tell the server, stop every timer, never come back. */
  leave() {
    const { clearTimeout } = this.#deps;
    if (this.#state === 'left') return;
    if (this.#joinSent) this.#socket.send({ type: 'leave', room: this.room, ref: this.#deps.nextRef('l') });
    this.#state = 'left';
    this.#joinSent = false;
    this.live = false;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#joinTimer);
    clearTimeout(this.#typingTimer);
    clearTimeout(this.#typingSendTimer);
    this.#socket.forget(this);
  }

  #join() {
    const { setTimeout, clearTimeout } = this.#deps;
    this.#joinRef = this.#deps.nextRef('j');
    this.#state = 'joining';
    this.#joinSent = this.#socket.send({ ...this.#joinFrame(), ref: this.#joinRef });
    clearTimeout(this.#joinTimer);
    const ref = this.#joinRef;
    // No welcome yet (a busy backend): ask again later; a welcome that comes meanwhile is taken all the same.
    this.#joinTimer = setTimeout(() => {
      if (this.#state === 'joining' && this.#joinRef === ref) this.#joinLater(1006);
    }, JOIN_TIMEOUT_MS);
  }

  #joinLater(code) {
    const delay = retryDelay(this.#attempts, code, false, this.#deps.random);
    this.#attempts += 1;
    this.#state = 'waiting';
    this.#retryAt = this.#deps.now() + delay;
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = this.#deps.setTimeout(() => {
      this.#retryTimer = null;
      if (this.#state !== 'waiting') return;
      this.#state = 'pending';
      if (this.#socket.live) this.#join();
      this.#refresh();
    }, delay);
    this.#refresh();
  }

  /** Not in the room any more (a refused join, or removed): no joining again until the person asks. */
  #refuse(detail) {
    this.#deps.clearTimeout(this.#retryTimer);
    this.#deps.clearTimeout(this.#joinTimer);
    this.#retryTimer = null;
    this.#state = 'refused';
    this.#joinSent = false;
    this.#refusal = detail;
    this.#refresh();
  }

  /** Out of the room on this connection (it went, the room restarted, or it was removed). */
  #unjoined() {
    this.live = false;
    this.#historyRef = null; // an answer will not come
    this.#deps.clearTimeout(this.#joinTimer);
    this.#typing.clear();
    this.#typingChanged();
    this.#emit('typing');
    this.#emit('outbox');
  }

  // --- what the socket says (called by the ChatSocket) ---------------------------------------------

  /** The socket is live (its hello came): join, unless not asked to, refused, or left. */
  socketLive() {
    if (this.#state !== 'pending' && this.#state !== 'waiting') return;
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#join();
    this.#refresh();
  }

  /** The socket went: whatever the room was doing, it joins again on the next connection. */
  socketClosed() {
    this.#joinSent = false;
    this.#joinRef = null;
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#state === 'joining' || this.#state === 'live' || this.#state === 'waiting') this.#state = 'pending';
    this.#unjoined();
  }

  /** The socket's status changed: so may this room's. */
  socketChanged() {
    this.#refresh();
  }

  /** Whether `ref` is one of this room's requests still waiting for an answer. */
  asked(ref) {
    return ref === this.#joinRef || ref === this.#historyRef || this.pending.some((p) => p.ref === ref);
  }

  /** A frame for this room. */
  receive(frame) {
    if (this.#state === 'left') return undefined;
    switch (frame.type) {
      case 'welcome': return this.#onWelcome(frame);
      case 'message': return this.#onMessage(frame);
      case 'ack': return this.#onAck(frame);
      case 'join': return this.#onJoin(frame.member);
      case 'leave': return this.#onLeave(frame.member);
      case 'typing': return this.#onTyping(frame.from);
      case 'history': return this.#onHistory(frame);
      case 'error': return this.#onError(frame);
      case 'left': return this.#onLeft(frame);
      default: return undefined; // whatever later versions add
    }
  }

  /** What the room shows: its own state, or the socket's while that is down or refused. */
  #refresh() {
    const socket = this.#socket;
    let status = this.epoch ? 'reconnecting' : 'connecting';
    let detail = '';
    let retryAt = 0;
    if (this.#state === 'refused') {
      [status, detail] = ['refused', this.#refusal];
    } else if (this.#state === 'live') {
      status = 'live';
    } else if (socket.status === 'refused') {
      [status, detail] = ['refused', socket.detail];
    } else if (socket.status === 'waiting' || socket.status === 'offline') {
      [status, retryAt] = [socket.status, socket.retryAt];
    } else if (this.#state === 'waiting') {
      [status, retryAt] = [this.#deps.online() ? 'waiting' : 'offline', this.#retryAt];
    }
    this.status = status;
    this.detail = detail;
    this.retryAt = retryAt;
    this.#emit('status');
  }

  #send(frame) {
    if (!this.live) return false;
    return this.#socket.send(frame);
  }

  #emit(kind, detail) {
    const handler = this.#listener[kind];
    if (handler) handler(this, detail);
  }

  // --- frames from the server ----------------------------------------------------------------------

  #onWelcome(frame) {
    this.#deps.clearTimeout(this.#joinTimer);
    this.#deps.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const rejoining = this.epoch != null;
    const recovered = rejoining && frame.recovered === true && frame.epoch === this.epoch;
    this.me = frame.you;
    this.#myIds.add(frame.you.id);
    this.#saveMyIds();
    this.members = new Map((frame.members || []).map((member) => [member.id, member]));
    this.#typing.clear();
    this.#typingChanged();
    const history = Array.isArray(frame.history) ? frame.history : [];
    if (!recovered) this.#clearMessages();
    const inserted = this.#addAll(history);
    this.epoch = frame.epoch;
    this.lastSeq = Math.max(this.lastSeq, Number(frame.seq) || 0);
    this.noMore = this.oldestSeq() <= 1;
    this.#reconcileOutbox(history, recovered);
    this.#state = 'live';
    this.#joinSent = true;
    this.live = true;
    this.#attempts = 0;
    this.#socket.welcomed();
    this.status = 'live';
    this.detail = '';
    this.retryAt = 0;
    for (const pending of this.pending) if (pending.state === 'queued') this.#transmit(pending);
    this.#emit('welcome', { rejoining, recovered, inserted });
  }

  /** The server took us out of the room: `restart` (its sequence restarted) joins again, `removed` does not. */
  #onLeft(frame) {
    if (frame.reason !== 'restart' && frame.reason !== 'removed') return; // the answer to a leave of an earlier client
    this.#joinSent = false;
    this.#joinRef = null;
    this.#unjoined();
    if (frame.reason === 'removed') {
      this.#refuse('You were removed from this room.');
    } else {
      this.#joinLater(1012);
    }
  }

  #onMessage(message) {
    const mine = !!(this.me && message.from && message.from.id === this.me.id);
    if (message.seq > this.lastSeq + 1 && this.seqs.length) this.#fillGap(message.seq);
    const placed = this.#add(message);
    if (!placed) return;
    if (message.from) this.#typing.delete(message.from.id);
    this.#typingChanged();
    if (mine) {
      const index = this.pending.findIndex((p) => p.seq === message.seq);
      const match = index >= 0 ? index
        : this.pending.findIndex((p) => p.state === 'sent' && p.seq == null && p.text === message.text);
      if (match >= 0) this.#drop(this.pending[match]);
    }
    this.#emit('message', { ...placed, mine });
  }

  #onAck(frame) {
    const pending = this.pending.find((p) => p.ref === frame.ref);
    if (!pending) return;
    if (this.#held.has(frame.seq)) {
      this.#drop(pending);
      this.#emit('outbox');
    } else {
      pending.seq = frame.seq; // with Redis the ack may come before the message itself
    }
  }

  #onJoin(member) {
    if (!member || !member.id) return;
    this.members.set(member.id, member);
    this.#emit('members');
  }

  #onLeave(member) {
    if (!member || !member.id) return;
    this.members.delete(member.id);
    this.#typing.delete(member.id);
    this.#typingChanged();
    this.#emit('members');
  }

  #onTyping(who) {
    if (!who || !who.id || (this.me && who.id === this.me.id)) return;
    this.#typing.set(who.id, { name: who.name, until: this.#deps.now() + TYPING_SHOW_MS });
    this.#typingChanged();
    this.#emit('typing');
  }

  #onHistory(frame) {
    if (frame.ref !== this.#historyRef) {
      // A gap filler: put whatever it brought in its place.
      this.#emit('history', { inserted: this.#addAll(frame.messages || []), paged: false });
      return;
    }
    this.#historyRef = null;
    const messages = Array.isArray(frame.messages) ? frame.messages : [];
    const inserted = this.#addAll(messages);
    if (!messages.length || this.oldestSeq() <= 1) this.noMore = true;
    this.#emit('history', { inserted, paged: true });
  }

  #onError(frame) {
    if (frame.ref != null && frame.ref === this.#joinRef) return this.#onJoinRefused(frame);
    const historyFailed = frame.ref != null && frame.ref === this.#historyRef;
    if (historyFailed) this.#historyRef = null;
    const pending = frame.ref == null ? null : this.pending.find((p) => p.ref === frame.ref) || null;
    if (pending) {
      pending.state = 'failed';
      pending.reason = frame.code === 'too_large' ? 'Too long' : 'Not sent';
      pending.retry = frame.code !== 'too_large' && frame.code !== 'bad_request';
    }
    this.#emit('error', { code: frame.code, detail: frame.detail, pending, historyFailed });
    return undefined;
  }

  /** The join was refused: later for a busy server, for good (until the person asks) otherwise. */
  #onJoinRefused(frame) {
    this.#joinRef = null;
    if (this.#state === 'live') return; // a join asked again after its welcome came late: already in
    this.#joinSent = false;
    this.#deps.clearTimeout(this.#joinTimer);
    if (frame.code === 'unavailable' || frame.code === 'rate_limited') {
      this.#joinLater(1013);
    } else {
      this.#refuse(REFUSALS[frame.code] || `The server refused to let you join this room: ${frame.detail || frame.code}`);
    }
  }

  // --- the messages held ---------------------------------------------------------------------------

  /** The seq of the oldest message held (one past the last seen when none is). */
  oldestSeq() {
    return this.seqs.length ? this.seqs[0] : this.lastSeq + 1;
  }

  /** Whether a message from `sender` was sent by this person (under any id it had in this room). */
  isMine(sender) {
    return !!sender && this.#myIds.has(sender.id);
  }

  /** Place a message in seq order: {message, before}, or null when it is held already (or is no message). */
  #add(message) {
    if (!message || typeof message.seq !== 'number' || this.#held.has(message.seq)) return null;
    let low = 0;
    let high = this.seqs.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.seqs[mid] < message.seq) low = mid + 1; else high = mid;
    }
    const before = low < this.seqs.length ? this.seqs[low] : null;
    this.seqs.splice(low, 0, message.seq);
    this.#held.add(message.seq);
    if (message.seq > this.lastSeq) this.lastSeq = message.seq;
    return { message, before };
  }

  #addAll(messages) {
    const inserted = [];
    for (const message of messages) {
      const placed = this.#add(message);
      if (placed) inserted.push(placed);
    }
    return inserted;
  }

  #clearMessages() {
    this.seqs = [];
    this.#held.clear();
    this.lastSeq = 0;
    this.noMore = false;
  }

  /** Stop holding the oldest messages beyond `keep` (they can be loaded again); the seqs let go, oldest first. */
  forgetOldest(keep) {
    if (this.seqs.length <= keep) return [];
    const gone = this.seqs.splice(0, this.seqs.length - keep);
    for (const seq of gone) this.#held.delete(seq);
    this.noMore = false;
    return gone;
  }

  #fillGap(seq) {
    const missing = seq - this.lastSeq - 1;
    this.#send({ type: 'history', room: this.room, before: seq, limit: Math.min(100, missing), ref: this.#deps.nextRef('g') });
  }

  /** Ask for the page of messages before the oldest held (unless one is on its way, or there is none). */
  loadOlder() {
    if (this.#historyRef || this.noMore || !this.live) return;
    this.#historyRef = this.#deps.nextRef('h');
    this.#send({ type: 'history', room: this.room, before: this.oldestSeq(), limit: HISTORY_PAGE, ref: this.#historyRef });
    this.#emit('paging');
  }

  // --- sending -------------------------------------------------------------------------------------

  /**
   * Send a message, or queue it until the connection is back. null when it went into the outbox;
   * 'refused' (this room refused the join) or 'too_large' (the frame would pass the limit) when not.
   */
  say(text) {
    if (this.status === 'refused') return 'refused';
    const ref = this.#deps.nextRef('m');
    if (utf8Length(JSON.stringify({ type: 'message', room: this.room, text, ref })) > MAX_FRAME_BYTES) return 'too_large';
    const pending = { ref, text, state: 'queued', seq: null, reason: '', retry: true };
    this.pending.push(pending);
    this.#transmit(pending);
    this.#emit('outbox');
    return null;
  }

  /** Send a failed message again, under a new ref. */
  retry(pending) {
    pending.state = 'queued';
    pending.seq = null;
    pending.ref = this.#deps.nextRef('m');
    this.#transmit(pending);
    this.#emit('outbox');
  }

  /** Take a message out of the outbox (sent or not). */
  discard(pending) {
    this.#drop(pending);
    this.#emit('outbox');
  }

  #transmit(pending) {
    pending.state = this.#send({ type: 'message', room: this.room, text: pending.text, ref: pending.ref }) ? 'sent' : 'queued';
  }

  #drop(pending) {
    this.pending = this.pending.filter((p) => p !== pending);
  }

  /** After a rejoin: own messages that made it before the drop leave the outbox; the rest are marked. */
  #reconcileOutbox(history, recovered) {
    if (!recovered) for (const pending of this.pending) pending.seq = null; // an old epoch's seqs mean nothing now
    for (const message of history) {
      if (!this.isMine(message.from)) continue;
      const match = this.pending.findIndex((p) => p.state === 'sent' && (p.seq === message.seq
        || (p.seq == null && p.text === message.text)));
      if (match >= 0) this.#drop(this.pending[match]);
    }
    for (const pending of this.pending) {
      if (pending.state !== 'sent') continue;
      if (pending.seq != null && this.#held.has(pending.seq)) continue;
      pending.state = 'failed';
      pending.reason = recovered ? 'Not sent: the connection dropped' : 'Maybe not sent: the connection dropped';
      pending.retry = true;
    }
    this.pending = this.pending.filter((p) => !(p.seq != null && this.#held.has(p.seq)));
  }

  // --- typing --------------------------------------------------------------------------------------

  /** The names of the others typing now, in the order they started. */
  typists() {
    this.#pruneTyping();
    return [...this.#typing.values()].map((who) => who.name);
  }

  /**
   * The person typed: tell the room at once, or when TYPING_EVERY_MS have passed since the last time.
   * `draft()` is the text being typed at that moment ('' once the person is no longer at this room).
   */
  typed(draft) {
    this.#lastInputAt = this.#deps.now();
    this.#noteTyping(draft);
  }

  #noteTyping(draft) {
    const { now } = this.#deps;
    if (!draft().trim() || !this.live || this.#typingSendTimer) return;
    const wait = this.#lastTypingSent + TYPING_EVERY_MS - now();
    if (wait > 0) {
      this.#typingSendTimer = this.#deps.setTimeout(() => {
        this.#typingSendTimer = null;
        if (now() - this.#lastInputAt < TYPING_EVERY_MS) this.#noteTyping(draft);
      }, wait);
      return;
    }
    this.#lastTypingSent = now();
    this.#send({ type: 'typing', room: this.room });
  }

  #pruneTyping() {
    const moment = this.#deps.now();
    for (const [id, who] of this.#typing) if (who.until <= moment) this.#typing.delete(id);
  }

  /** Forget who stopped typing, and come back when the next one's time is up. */
  #typingChanged() {
    this.#pruneTyping();
    this.#deps.clearTimeout(this.#typingTimer);
    this.#typingTimer = null;
    if (!this.#typing.size) return;
    const next = Math.min(...[...this.#typing.values()].map((who) => who.until)) - this.#deps.now();
    this.#typingTimer = this.#deps.setTimeout(() => {
      this.#typingChanged();
      this.#emit('typing');
    }, Math.max(50, next));
  }

  // --- own ids -------------------------------------------------------------------------------------

  #loadMyIds() {
    try {
      return new Set(JSON.parse(this.#deps.storage.getItem(`chat.ids.${this.room}`) || '[]'));
    } catch (_) {
      return new Set();
    }
  }

  #saveMyIds() {
    try {
      this.#deps.storage.setItem(`chat.ids.${this.room}`, JSON.stringify([...this.#myIds].slice(-50)));
    } catch (_) { /* storage may be off: own messages from earlier visits then look like anyone's */ }
  }
}
