/* The chat protocol (v1, see the README) for one room, as the web client speaks it. No DOM here.
 *
 * A RoomClient is one joined room: its connection and what it knows. It keeps the last seq it saw
 * and the epoch from its welcome, and after a drop rejoins with both (exponential backoff with
 * jitter), so the server sends exactly what was missed; messages are deduplicated and ordered by
 * seq, acks matched by ref. It tells a listener what changed and never touches the page.
 *
 * Everything it takes from the browser (WebSocket, timers, clock, randomness, session storage,
 * the health probe, whether the network is up) is a dependency with the browser's as default, so
 * it runs, and is tested, anywhere.
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
export const JOIN_TIMEOUT_MS = 10000; // a connection without its welcome by then is given up
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

/** The room's WebSocket address under `base` (where the app is mounted), with `since`/`epoch` once known. */
export function socketUrl(base, room, name, lastSeq, epoch) {
  const url = new URL(`ws/${encodeURIComponent(room)}`, base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('name', name);
  if (epoch) {
    url.searchParams.set('since', String(lastSeq));
    url.searchParams.set('epoch', epoch);
  }
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

// --- one room --------------------------------------------------------------------------------------

/**
 * One joined room over protocol v1.
 *
 * `new RoomClient(room, {name, base, listener, ...dependencies})`, then `connect()`. The listener's
 * methods (each optional, each called with the client first) say what changed, once the client's
 * state is consistent again:
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
 * State to read: status ('connecting', 'reconnecting', 'live', 'waiting', 'offline', 'refused'),
 * detail, retryAt, live, me, members (id -> member), epoch, lastSeq, seqs (held, ascending),
 * noMore (nothing older to load), loadingOlder, pending (the outbox, oldest first).
 */
export class RoomClient {
  #deps;
  #listener;
  #ws = null;
  #opened = false;
  #leaving = false;
  #attempts = 0;
  #reachableFailures = 0;
  #retryTimer = null;
  #joinTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #lastFrameAt = 0;
  #held = new Set();
  #historyRef = null;
  #myIds;
  #typing = new Map(); // member id -> {name, until}
  #typingTimer = null;
  #typingSendTimer = null;
  #lastTypingSent = 0;
  #lastInputAt = 0;

  constructor(room, { name, base, listener = {}, ...dependencies }) {
    this.room = room;
    this.displayName = name;
    this.base = base;
    this.#listener = listener;
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

  /** The address the next connection uses. */
  url() {
    return socketUrl(this.base, this.room, this.displayName, this.lastSeq, this.epoch);
  }

  // --- the connection ------------------------------------------------------------------------------

  /** Open a new connection now (closing the current one, if any). */
  connect() {
    const { clearTimeout, setTimeout } = this.#deps;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#detach();
    this.#leaving = false;
    const ws = new this.#deps.WebSocket(this.url());
    this.#ws = ws;
    this.#opened = false;
    this.#setStatus(this.epoch ? 'reconnecting' : 'connecting');
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
    this.#joinTimer = setTimeout(() => {
      if (ws === this.#ws && !this.live) this.#closed(1006, 'no welcome');
    }, JOIN_TIMEOUT_MS);
  }

  /** Forget the waits and connect at once (the person pressed "Retry now" or "Try again"). */
  retryNow() {
    this.#attempts = 0;
    this.#reachableFailures = 0;
    this.connect();
  }

  /** Rejoin under another display name, recovering what was missed meanwhile. */
  rejoinAs(name) {
    this.displayName = name;
    this.connect();
  }

  /** Leave the room for good: close the connection, stop every timer, never come back. */
  leave() {
    const { clearTimeout } = this.#deps;
    this.#leaving = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#typingTimer);
    clearTimeout(this.#typingSendTimer);
    this.#detach();
  }

  /** Forget the socket (its late events are ignored) and close it. */
  #detach() {
    const ws = this.#ws;
    this.#ws = null;
    this.live = false;
    this.#historyRef = null; // an answer on the old socket will not come
    this.#deps.clearTimeout(this.#joinTimer);
    this.#stopHeartbeat();
    if (ws && ws.readyState <= OPEN) {
      try {
        ws.close(1000);
      } catch (_) { /* already closing */ }
    }
  }

  #closed(code, reason) {
    const opened = this.#opened;
    this.#detach();
    this.#typing.clear();
    this.#typingChanged();
    this.#emit('typing');
    this.#emit('outbox');
    if (this.#leaving) return;
    if (code === 1008) {
      this.#refuse(reason || 'The server refused to let you join this room.');
      return;
    }
    if (!opened) {
      // The handshake failed: either the server is away, or it answered 403 (which a browser cannot
      // read). Ask /healthz: twice refused while the server answers means the join itself is refused.
      this.#deps.probe().then((answers) => {
        if (this.#ws || this.#leaving) return;
        this.#reachableFailures = answers ? this.#reachableFailures + 1 : 0;
        if (this.#reachableFailures >= 2) {
          this.#refuse('The server refused to let you join this room with this name.');
        } else {
          this.#retryLater(code, answers);
        }
      });
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
    this.#emit('status');
  }

  #startHeartbeat() {
    const { now, setTimeout, clearTimeout } = this.#deps;
    this.#stopHeartbeat();
    this.#pingTimer = this.#deps.setInterval(() => {
      // One ping at a time: pinging again would restart the wait for the answer, which then never ends.
      if (!this.live || this.#pongTimer != null || now() - this.#lastFrameAt < HEARTBEAT_MS) return;
      const sentAt = now();
      this.#send({ type: 'ping', ref: this.#deps.nextRef('p') });
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

  #send(frame) {
    if (!this.live || !this.#ws) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #emit(kind, detail) {
    const handler = this.#listener[kind];
    if (handler) handler(this, detail);
  }

  // --- frames from the server ----------------------------------------------------------------------

  #onFrame(frame) {
    switch (frame.type) {
      case 'welcome': return this.#onWelcome(frame);
      case 'message': return this.#onMessage(frame);
      case 'ack': return this.#onAck(frame);
      case 'join': return this.#onJoin(frame.member);
      case 'leave': return this.#onLeave(frame.member);
      case 'typing': return this.#onTyping(frame.from);
      case 'history': return this.#onHistory(frame);
      case 'error': return this.#onError(frame);
      default: return undefined; // pong, and whatever later versions add
    }
  }

  #onWelcome(frame) {
    this.#deps.clearTimeout(this.#joinTimer);
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
    this.live = true;
    this.#attempts = 0;
    this.#reachableFailures = 0;
    this.#lastFrameAt = this.#deps.now();
    this.#startHeartbeat();
    this.status = 'live';
    this.detail = '';
    for (const pending of this.pending) if (pending.state === 'queued') this.#transmit(pending);
    this.#emit('welcome', { rejoining, recovered, inserted });
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
    const historyFailed = frame.ref != null && frame.ref === this.#historyRef;
    if (historyFailed) this.#historyRef = null;
    const pending = frame.ref == null ? null : this.pending.find((p) => p.ref === frame.ref) || null;
    if (pending) {
      pending.state = 'failed';
      pending.reason = frame.code === 'too_large' ? 'Too long' : 'Not sent';
      pending.retry = frame.code !== 'too_large' && frame.code !== 'bad_request';
    }
    this.#emit('error', { code: frame.code, detail: frame.detail, pending, historyFailed });
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
    this.#send({ type: 'history', before: seq, limit: Math.min(100, missing), ref: this.#deps.nextRef('g') });
  }

  /** Ask for the page of messages before the oldest held (unless one is on its way, or there is none). */
  loadOlder() {
    if (this.#historyRef || this.noMore || !this.live) return;
    this.#historyRef = this.#deps.nextRef('h');
    this.#send({ type: 'history', before: this.oldestSeq(), limit: HISTORY_PAGE, ref: this.#historyRef });
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
    if (utf8Length(JSON.stringify({ type: 'message', text, ref })) > MAX_FRAME_BYTES) return 'too_large';
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
    pending.state = this.#send({ type: 'message', text: pending.text, ref: pending.ref }) ? 'sent' : 'queued';
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
    this.#send({ type: 'typing' });
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
