/* The chat's web client: plain JavaScript, no build step, nothing fetched from elsewhere.
 *
 * One WebSocket per joined room (protocol v1, see the README). Each room keeps the last seq it saw
 * and the epoch from its welcome, and reconnects with both after a drop, so the server sends exactly
 * what was missed; messages are deduplicated and ordered by seq. Text from the network only ever
 * reaches the page through textContent / text nodes, never as HTML.
 */
'use strict';

(() => {
  // --- constants -----------------------------------------------------------------------------------

  /** Where the app is mounted: app.js lives at <mount>/static/app.js. */
  const BASE = new URL('../', document.currentScript.src);
  const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
  const CONTROL_RE = /[\p{Cc}\p{Zl}\p{Zp}]/u;
  const NAME_MAX = 32;
  const TYPING_EVERY_MS = 2000; // send `typing` at most this often
  const TYPING_SHOW_MS = 4000; // show someone as typing this long after their last `typing`
  const HISTORY_PAGE = 50;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const HEARTBEAT_MS = 25000; // ping when nothing arrived for this long
  const HEARTBEAT_TIMEOUT_MS = 10000; // and give the socket up when the pong does not come
  const JOIN_TIMEOUT_MS = 10000; // a connection without its welcome by then is given up
  const MAX_FRAME_BYTES = 60000; // below the server's 64 KiB frame limit (which closes the socket)
  const KEEP_MESSAGES = 1500; // messages kept per room while reading at the bottom
  const GROUP_MS = 5 * 60 * 1000;
  const BOTTOM_SLACK_PX = 48;
  const CLOSE_ICON = 'M6 6l12 12M18 6L6 18';

  // --- elements ------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const ui = {
    setup: $('setup'), setupForm: $('setup-form'), setupTitle: $('setup-title'), setupText: $('setup-text'),
    setupName: $('setup-name'), setupRoom: $('setup-room'), setupNameError: $('setup-name-error'),
    setupRoomError: $('setup-room-error'), setupCancel: $('setup-cancel'), setupSubmit: $('setup-submit'),
    app: $('app'), sidebar: $('sidebar'), scrim: $('scrim'), openSidebar: $('open-sidebar'),
    closeSidebar: $('close-sidebar'), unreadElsewhere: $('unread-elsewhere'),
    roomList: $('room-list'), joinForm: $('join-form'), joinRoom: $('join-room'), joinError: $('join-error'),
    memberList: $('member-list'), memberCount: $('member-count'),
    meAvatar: $('me-avatar'), meName: $('me-name'), changeName: $('change-name'),
    roomTitle: $('room-title'), roomSubtitle: $('room-subtitle'),
    status: $('status'), statusText: $('status-text'), retryNow: $('retry-now'), copyLink: $('copy-link'),
    statusAnnounce: $('status-announce'),
    notices: $('notices'), scroller: $('scroller'), older: $('older'), loadOlder: $('load-older'),
    olderStatus: $('older-status'), views: $('views'), jump: $('jump'), jumpText: $('jump-text'),
    typing: $('typing'), errors: $('errors'), composer: $('composer'), message: $('message'),
    charCount: $('char-count'), send: $('send'),
  };

  // --- state ---------------------------------------------------------------------------------------

  const state = {
    name: '',
    rooms: new Map(), // room name -> Room, in the sidebar's order (the order they were joined in)
    active: null, // the Room on screen
    refs: 0,
  };

  /** Everything the client knows about one joined room. */
  function newRoom(name) {
    const list = h('ol', { class: 'messages', 'aria-label': `Messages in ${name}` });
    const outbox = h('ol', { class: 'messages outbox', 'aria-label': 'Messages being sent' });
    const view = h('div', { class: 'view', role: 'log', 'aria-label': `#${name}`, hidden: true }, list, outbox);
    ui.views.append(view);
    return {
      name, view, list, outbox,
      ws: null, live: false, opened: false, leaving: false,
      status: 'connecting', detail: '', attempts: 0, timer: null, retryAt: 0, reachableFailures: 0,
      pingTimer: null, pongTimer: null, joinTimer: null, lastFrameAt: 0,
      me: null, myIds: loadMyIds(name), members: new Map(), epoch: null, lastSeq: 0,
      bySeq: new Map(), seqs: [], pending: [], typing: new Map(), typingTimer: null,
      unread: 0, below: 0, atBottom: true, scrollTop: null, noMore: false, historyRef: null,
      lastTypingSent: 0, lastInputAt: 0, typingSendTimer: null, draft: '',
      notices: [], error: null, errorTimer: null,
    };
  }

  // --- small helpers -------------------------------------------------------------------------------

  /** Build an element. Children that are strings become text nodes: nothing here parses HTML. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value == null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) if (child != null) el.append(child);
    return el;
  }

  const now = () => Date.now();
  const utf8Length = (text) => new TextEncoder().encode(text).length;
  const chars = (text) => [...text].length;

  function validateName(raw) {
    const name = (raw || '').trim();
    if (!name) return [null, 'Pick a name.'];
    if (chars(name) > NAME_MAX) return [null, `Use at most ${NAME_MAX} characters.`];
    if (CONTROL_RE.test(name)) return [null, 'Control characters are not allowed.'];
    return [name, ''];
  }

  function validateRoom(raw) {
    const room = (raw || '').trim().replace(/^#/, '');
    if (!room) return [null, 'Pick a room.'];
    if (!ROOM_RE.test(room)) {
      return [null, 'Use up to 64 letters, digits, "_", "." or "-", starting with a letter or digit.'];
    }
    return [room, ''];
  }

  function hue(text) {
    let hash = 0;
    for (const ch of text) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return hash % 360;
  }

  function initials(name) {
    const words = name.trim().split(/\s+/).filter(Boolean);
    const first = (word) => (word ? [...word][0] : '');
    return (first(words[0]) + (words.length > 1 ? first(words[words.length - 1]) : '')).toUpperCase() || '?';
  }

  function avatar(name) {
    const el = h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name));
    el.style.setProperty('--hue', String(hue(name)));
    return el;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });

  function dayKey(ts) {
    const d = new Date(ts);
    return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
  }

  function dayLabel(ts) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(ts) === dayKey(today.getTime())) return 'Today';
    if (dayKey(ts) === dayKey(yesterday.getTime())) return 'Yesterday';
    return dayFormat.format(new Date(ts));
  }

  /** Message text as nodes: plain text, with http(s) links made clickable (as elements, never HTML). */
  function richText(text) {
    const out = document.createDocumentFragment();
    const pattern = /\bhttps?:\/\/[^\s<>"']+/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      let url = match[0].replace(/[.,;:!?)\]}]+$/, '');
      const start = match.index;
      let href = null;
      try {
        const parsed = new URL(url);
        if (parsed.protocol === 'http:' || parsed.protocol === 'https:') href = parsed.href;
      } catch (_) { /* not a link after all */ }
      if (!href) continue;
      out.append(text.slice(last, start));
      out.append(h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, url));
      last = start + url.length;
    }
    out.append(text.slice(last));
    return out;
  }

  function loadMyIds(room) {
    try {
      return new Set(JSON.parse(sessionStorage.getItem(`chat.ids.${room}`) || '[]'));
    } catch (_) {
      return new Set();
    }
  }

  function saveMyIds(room) {
    try {
      sessionStorage.setItem(`chat.ids.${room.name}`, JSON.stringify([...room.myIds].slice(-50)));
    } catch (_) { /* storage may be off: own messages from earlier visits then look like anyone's */ }
  }

  // --- the connection ------------------------------------------------------------------------------

  function socketUrl(room) {
    const url = new URL(`ws/${encodeURIComponent(room.name)}`, BASE);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('name', state.name);
    if (room.epoch) {
      url.searchParams.set('since', String(room.lastSeq));
      url.searchParams.set('epoch', room.epoch);
    }
    return url.href;
  }

  function connect(room) {
    clearTimeout(room.timer);
    room.timer = null;
    detach(room);
    room.leaving = false;
    const ws = new WebSocket(socketUrl(room));
    room.ws = ws;
    room.opened = false;
    setStatus(room, room.epoch ? 'reconnecting' : 'connecting');
    ws.addEventListener('open', () => {
      if (ws === room.ws) room.opened = true;
    });
    ws.addEventListener('message', (event) => {
      if (ws !== room.ws || typeof event.data !== 'string') return;
      room.lastFrameAt = now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (frame && typeof frame === 'object') handleFrame(room, frame);
    });
    ws.addEventListener('close', (event) => {
      if (ws === room.ws) closed(room, event.code, event.reason);
    });
    room.joinTimer = setTimeout(() => {
      if (ws === room.ws && !room.live) closed(room, 1006, 'no welcome');
    }, JOIN_TIMEOUT_MS);
  }

  /** Forget the room's socket (its late events are ignored) and close it. */
  function detach(room) {
    const ws = room.ws;
    room.ws = null;
    room.live = false;
    room.historyRef = null; // an answer on the old socket will not come
    clearTimeout(room.joinTimer);
    stopHeartbeat(room);
    if (ws && ws.readyState <= WebSocket.OPEN) {
      try {
        ws.close(1000);
      } catch (_) { /* already closing */ }
    }
  }

  function closed(room, code, reason) {
    const opened = room.opened;
    detach(room);
    clearTyping(room);
    renderPending(room);
    if (room.leaving) return;
    if (code === 1008) {
      refuse(room, reason || 'The server refused to let you join this room.');
      return;
    }
    if (!opened) {
      // The handshake failed: either the server is away, or it answered 403 (which a browser cannot
      // read). Ask /healthz: twice refused while the server answers means the join itself is refused.
      probe().then((reachable) => {
        if (room.ws || room.leaving || !state.rooms.has(room.name)) return;
        room.reachableFailures = reachable ? room.reachableFailures + 1 : 0;
        if (room.reachableFailures >= 2) {
          refuse(room, 'The server refused to let you join this room with this name.');
        } else {
          retryLater(room, code, reachable);
        }
      });
      return;
    }
    room.reachableFailures = 0;
    retryLater(room, code, false);
  }

  async function probe() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 4000);
    try {
      await fetch(new URL('healthz', BASE), { cache: 'no-store', signal: controller.signal });
      return true;
    } catch (_) {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Exponential backoff with jitter: half the step plus a random part of the other half. */
  function backoff(attempt) {
    const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    return step / 2 + Math.random() * (step / 2);
  }

  function retryLater(room, code, soon) {
    let delay = backoff(room.attempts);
    if (code === 1012 && room.attempts === 0) delay = 150 + Math.random() * 600; // restarting: come back soon
    if (code === 1013) delay = Math.max(delay, 2000 + Math.random() * 2000); // busy: give it air
    if (soon) delay = Math.min(delay, 300 + Math.random() * 300);
    room.attempts += 1;
    room.retryAt = now() + delay;
    room.timer = setTimeout(() => connect(room), delay);
    setStatus(room, navigator.onLine === false ? 'offline' : 'waiting');
  }

  function refuse(room, detail) {
    clearTimeout(room.timer);
    room.timer = null;
    setStatus(room, 'refused', detail);
  }

  function retryNow(room) {
    room.attempts = 0;
    room.reachableFailures = 0;
    connect(room);
  }

  function startHeartbeat(room) {
    stopHeartbeat(room);
    room.pingTimer = setInterval(() => {
      if (!room.live || now() - room.lastFrameAt < HEARTBEAT_MS) return;
      const sentAt = now();
      sendFrame(room, { type: 'ping', ref: nextRef('p') });
      clearTimeout(room.pongTimer);
      room.pongTimer = setTimeout(() => {
        if (room.live && room.lastFrameAt < sentAt) closed(room, 1006, 'no answer to ping');
      }, HEARTBEAT_TIMEOUT_MS);
    }, 5000);
  }

  function stopHeartbeat(room) {
    clearInterval(room.pingTimer);
    clearTimeout(room.pongTimer);
    room.pingTimer = room.pongTimer = null;
  }

  function sendFrame(room, frame) {
    if (!room.live || !room.ws) return false;
    room.ws.send(JSON.stringify(frame));
    return true;
  }

  function nextRef(prefix) {
    state.refs += 1;
    return `${prefix}${state.refs}`;
  }

  // --- frames from the server ----------------------------------------------------------------------

  function handleFrame(room, frame) {
    switch (frame.type) {
      case 'welcome': return onWelcome(room, frame);
      case 'message': return onMessage(room, frame);
      case 'ack': return onAck(room, frame);
      case 'join': return onJoin(room, frame.member);
      case 'leave': return onLeave(room, frame.member);
      case 'typing': return onTyping(room, frame.from);
      case 'history': return onHistory(room, frame);
      case 'error': return onError(room, frame);
      default: return undefined; // pong, and whatever later versions add
    }
  }

  function onWelcome(room, frame) {
    clearTimeout(room.joinTimer);
    const rejoining = room.epoch != null;
    const recovered = rejoining && frame.recovered === true && frame.epoch === room.epoch;
    room.me = frame.you;
    room.myIds.add(frame.you.id);
    saveMyIds(room);
    room.members = new Map((frame.members || []).map((member) => [member.id, member]));
    clearTyping(room);
    const history = Array.isArray(frame.history) ? frame.history : [];
    const stick = keepBottom(room);
    if (recovered) {
      let added = 0;
      for (const message of history) if (addMessage(room, message)) added += 1;
      countUnread(room, added);
    } else {
      if (rejoining) {
        notice(room, 'recovery',
          'Some messages sent while you were disconnected could not be recovered. Showing the latest history.');
      }
      clearMessages(room);
      for (const message of history) addMessage(room, message);
    }
    room.epoch = frame.epoch;
    room.lastSeq = Math.max(room.lastSeq, Number(frame.seq) || 0);
    room.noMore = oldestSeq(room) <= 1;
    reconcileOutbox(room, history, recovered);
    room.live = true;
    room.attempts = 0;
    room.reachableFailures = 0;
    room.lastFrameAt = now();
    startHeartbeat(room);
    setStatus(room, 'live');
    flushOutbox(room);
    renderMembers(room);
    renderOlder(room);
    afterAppend(room, stick, !rejoining);
  }

  function onMessage(room, message) {
    const stick = keepBottom(room);
    const mine = room.me && message.from && message.from.id === room.me.id;
    if (message.seq > room.lastSeq + 1 && room.seqs.length) fillGap(room, message.seq);
    if (!addMessage(room, message)) return;
    if (message.from) room.typing.delete(message.from.id);
    renderTyping(room);
    if (mine) {
      const index = room.pending.findIndex((p) => p.seq === message.seq);
      const match = index >= 0 ? index
        : room.pending.findIndex((p) => p.state === 'sent' && p.seq == null && p.text === message.text);
      if (match >= 0) dropPending(room, room.pending[match]);
    } else {
      countUnread(room, 1);
    }
    trimOld(room);
    afterAppend(room, stick || mine, false);
  }

  function onAck(room, frame) {
    const pending = room.pending.find((p) => p.ref === frame.ref);
    if (!pending) return;
    if (room.bySeq.has(frame.seq)) {
      dropPending(room, pending);
    } else {
      pending.seq = frame.seq; // with Redis the ack may come before the message itself
    }
  }

  function onJoin(room, member) {
    if (!member || !member.id) return;
    room.members.set(member.id, member);
    renderMembers(room);
  }

  function onLeave(room, member) {
    if (!member || !member.id) return;
    room.members.delete(member.id);
    room.typing.delete(member.id);
    renderMembers(room);
    renderTyping(room);
  }

  function onTyping(room, who) {
    if (!who || !who.id || (room.me && who.id === room.me.id)) return;
    room.typing.set(who.id, { name: who.name, until: now() + TYPING_SHOW_MS });
    renderTyping(room);
  }

  function onHistory(room, frame) {
    if (frame.ref !== room.historyRef) {
      // A gap filler: put whatever it brought in its place.
      for (const message of frame.messages || []) addMessage(room, message);
      return;
    }
    room.historyRef = null;
    const messages = Array.isArray(frame.messages) ? frame.messages : [];
    const active = room === state.active;
    const before = ui.scroller.scrollHeight;
    const top = ui.scroller.scrollTop;
    for (const message of messages) addMessage(room, message);
    if (active) ui.scroller.scrollTop = top + (ui.scroller.scrollHeight - before);
    if (!messages.length || oldestSeq(room) <= 1) room.noMore = true;
    renderOlder(room);
  }

  const ERROR_TEXT = {
    rate_limited: 'You are sending too fast. Wait a moment, then try again.',
    too_large: 'That message is too long to send.',
    unavailable: 'The server cannot deliver messages right now. Try again in a moment.',
    unsupported: 'The server did not understand that.',
  };

  function onError(room, frame) {
    const text = ERROR_TEXT[frame.code] || `The server refused that: ${frame.detail || frame.code}`;
    if (frame.ref != null && frame.ref === room.historyRef) {
      room.historyRef = null;
      renderOlder(room, 'Could not load older messages.');
    }
    const pending = frame.ref == null ? null : room.pending.find((p) => p.ref === frame.ref);
    if (pending) {
      pending.state = 'failed';
      pending.reason = frame.code === 'too_large' ? 'Too long' : 'Not sent';
      pending.retry = frame.code !== 'too_large' && frame.code !== 'bad_request';
      renderPending(room);
    }
    showError(room, text, frame.code);
  }

  // --- the message list ----------------------------------------------------------------------------

  function oldestSeq(room) {
    return room.seqs.length ? room.seqs[0] : room.lastSeq + 1;
  }

  function isMine(room, sender) {
    return !!sender && room.myIds.has(sender.id);
  }

  function messageElement(room, message) {
    const sender = message.from || { id: '', name: '?' };
    const ts = Number(message.ts) || 0;
    const when = new Date(ts);
    const mine = isMine(room, sender);
    const li = h('li', { class: mine ? 'message mine' : 'message', 'data-seq': message.seq });
    li.style.setProperty('--hue', String(hue(String(sender.name))));
    li.dataset.author = sender.id;
    li.dataset.ts = String(ts);
    li.dataset.day = dayKey(ts);
    li.append(
      avatar(String(sender.name)),
      h('div', { class: 'bubble' },
        h('div', { class: 'meta' },
          h('span', { class: 'author' }, String(sender.name)),
          h('time', { datetime: when.toISOString(), title: fullFormat.format(when) }, timeFormat.format(when))),
        h('div', { class: 'text' }, richText(String(message.text)))));
    return li;
  }

  /** Insert a message in seq order; false when it is already shown (or is not a message). */
  function addMessage(room, message) {
    if (!message || typeof message.seq !== 'number' || room.bySeq.has(message.seq)) return false;
    const li = messageElement(room, message);
    let low = 0;
    let high = room.seqs.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (room.seqs[mid] < message.seq) low = mid + 1; else high = mid;
    }
    const next = low < room.seqs.length ? room.bySeq.get(room.seqs[low]) : null;
    room.seqs.splice(low, 0, message.seq);
    room.bySeq.set(message.seq, li);
    room.list.insertBefore(li, next);
    regroup(li);
    if (next) regroup(next);
    if (message.seq > room.lastSeq) room.lastSeq = message.seq;
    return true;
  }

  /** A message continues its neighbour's group (same author, close in time) or starts a new day. */
  function regroup(li) {
    const prev = li.previousElementSibling;
    const ts = Number(li.dataset.ts);
    const newDay = !prev || prev.dataset.day !== li.dataset.day;
    li.classList.toggle('new-day', newDay);
    if (newDay) li.dataset.dayLabel = dayLabel(ts); else delete li.dataset.dayLabel;
    const same = !newDay && prev.dataset.author === li.dataset.author && ts - Number(prev.dataset.ts) < GROUP_MS;
    li.classList.toggle('continued', same);
  }

  function clearMessages(room) {
    room.list.replaceChildren();
    room.bySeq.clear();
    room.seqs = [];
    room.lastSeq = 0;
    room.noMore = false;
  }

  /** Reading at the bottom: forget the oldest messages beyond KEEP_MESSAGES (they can be loaded again). */
  function trimOld(room) {
    if (room.seqs.length <= KEEP_MESSAGES || !room.atBottom) return;
    for (const seq of room.seqs.splice(0, room.seqs.length - KEEP_MESSAGES)) {
      room.bySeq.get(seq).remove();
      room.bySeq.delete(seq);
    }
    if (room.seqs.length) regroup(room.bySeq.get(room.seqs[0]));
    room.noMore = false;
    renderOlder(room);
  }

  function fillGap(room, seq) {
    const missing = seq - room.lastSeq - 1;
    sendFrame(room, { type: 'history', before: seq, limit: Math.min(100, missing), ref: nextRef('g') });
  }

  function loadOlder(room) {
    if (room.historyRef || room.noMore || !room.live) return;
    room.historyRef = nextRef('h');
    sendFrame(room, { type: 'history', before: oldestSeq(room), limit: HISTORY_PAGE, ref: room.historyRef });
    renderOlder(room);
  }

  function renderOlder(room, problem) {
    if (room !== state.active) return;
    const loading = !!room.historyRef;
    ui.older.hidden = room.noMore && !room.seqs.length;
    ui.loadOlder.hidden = room.noMore;
    ui.loadOlder.disabled = loading || !room.live;
    ui.loadOlder.textContent = loading ? 'Loading…' : 'Load older messages';
    ui.olderStatus.textContent = problem || (room.noMore ? 'This is the beginning of the room.' : '');
  }

  // --- sending -------------------------------------------------------------------------------------

  function submitMessage() {
    const room = state.active;
    if (!room) return;
    const text = ui.message.value;
    if (!text.trim()) return;
    if (room.status === 'refused') {
      showError(room, 'You are not in this room: press "Try again" above, or leave it.', 'refused');
      return;
    }
    const ref = nextRef('m');
    if (utf8Length(JSON.stringify({ type: 'message', text, ref })) > MAX_FRAME_BYTES) {
      showError(room, 'That message is too long to send.', 'too_large');
      return;
    }
    const pending = { ref, text, state: 'queued', seq: null, reason: '', retry: true, el: null };
    room.pending.push(pending);
    transmit(room, pending);
    ui.message.value = '';
    room.draft = '';
    resizeComposer();
    updateCharCount();
    renderPending(room);
    afterAppend(room, true, false);
    ui.message.focus();
  }

  function transmit(room, pending) {
    pending.state = sendFrame(room, { type: 'message', text: pending.text, ref: pending.ref }) ? 'sent' : 'queued';
  }

  function flushOutbox(room) {
    for (const pending of room.pending) if (pending.state === 'queued') transmit(room, pending);
    renderPending(room);
  }

  /** After a rejoin: own messages that made it before the drop leave the outbox; the rest are marked. */
  function reconcileOutbox(room, history, recovered) {
    if (!recovered) for (const pending of room.pending) pending.seq = null; // an old epoch's seqs mean nothing now
    for (const message of history) {
      if (!isMine(room, message.from)) continue;
      const match = room.pending.findIndex((p) => p.state === 'sent' && (p.seq === message.seq
        || (p.seq == null && p.text === message.text)));
      if (match >= 0) dropPending(room, room.pending[match]);
    }
    for (const pending of room.pending) {
      if (pending.state !== 'sent') continue;
      if (pending.seq != null && room.bySeq.has(pending.seq)) continue;
      pending.state = 'failed';
      pending.reason = recovered ? 'Not sent: the connection dropped' : 'Maybe not sent: the connection dropped';
      pending.retry = true;
    }
    room.pending = room.pending.filter((p) => !(p.seq != null && room.bySeq.has(p.seq)));
  }

  function dropPending(room, pending) {
    room.pending = room.pending.filter((p) => p !== pending);
    if (pending.el) pending.el.remove();
  }

  function renderPending(room) {
    for (const pending of room.pending) {
      const label = pending.state === 'failed' ? pending.reason
        : pending.state === 'queued' ? 'Waiting for the connection…' : 'Sending…';
      const actions = pending.state === 'failed' ? h('span', { class: 'pending-actions' },
        pending.retry ? h('button', {
          type: 'button', class: 'link-button', onclick: () => {
            pending.state = 'queued';
            pending.seq = null;
            pending.ref = nextRef('m');
            transmit(room, pending);
            renderPending(room);
          },
        }, 'Retry') : h('button', {
          type: 'button', class: 'link-button', onclick: () => {
            ui.message.value = pending.text;
            room.draft = pending.text;
            dropPending(room, pending);
            resizeComposer();
            updateCharCount();
            ui.message.focus();
          },
        }, 'Edit'),
        h('button', { type: 'button', class: 'link-button', onclick: () => dropPending(room, pending) }, 'Discard'))
        : null;
      const li = h('li', { class: `message mine pending ${pending.state}` },
        h('div', { class: 'bubble' },
          h('div', { class: 'text' }, pending.text),
          h('div', { class: 'pending-state' }, h('span', {}, label), actions)));
      if (pending.el && pending.el.parentNode) pending.el.replaceWith(li); else room.outbox.append(li);
      pending.el = li;
    }
  }

  function onComposerInput() {
    const room = state.active;
    resizeComposer();
    updateCharCount();
    if (!room) return;
    room.draft = ui.message.value;
    room.lastInputAt = now();
    noteTyping(room);
  }

  /** Tell the room that we type: at once, or when 2 s have passed since the last time we told it. */
  function noteTyping(room) {
    if (!room.draft.trim() || !room.live || room.typingSendTimer) return;
    const wait = room.lastTypingSent + TYPING_EVERY_MS - now();
    if (wait > 0) {
      room.typingSendTimer = setTimeout(() => {
        room.typingSendTimer = null;
        if (room === state.active && now() - room.lastInputAt < TYPING_EVERY_MS) noteTyping(room);
      }, wait);
      return;
    }
    room.lastTypingSent = now();
    sendFrame(room, { type: 'typing' });
  }

  function resizeComposer() {
    ui.message.style.height = 'auto';
    ui.message.style.height = `${Math.min(ui.message.scrollHeight, 180)}px`;
  }

  function updateCharCount() {
    const count = chars(ui.message.value);
    ui.charCount.textContent = count > 3500 ? `${count} / 4000` : '';
    ui.charCount.classList.toggle('over', count > 4000);
  }

  // --- typing --------------------------------------------------------------------------------------

  function clearTyping(room) {
    room.typing.clear();
    renderTyping(room);
  }

  function renderTyping(room) {
    const moment = now();
    for (const [id, who] of room.typing) if (who.until <= moment) room.typing.delete(id);
    clearTimeout(room.typingTimer);
    if (room.typing.size) {
      const next = Math.min(...[...room.typing.values()].map((who) => who.until)) - moment;
      room.typingTimer = setTimeout(() => renderTyping(room), Math.max(50, next));
    }
    if (room !== state.active) return;
    const names = [...room.typing.values()].map((who) => who.name);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names.length} people are typing…`;
    ui.typing.textContent = text;
    ui.typing.classList.toggle('on', !!text);
  }

  // --- notices, errors, status ---------------------------------------------------------------------

  function notice(room, key, text) {
    room.notices = room.notices.filter((n) => n.key !== key);
    room.notices.push({ key, text });
    renderNotices(room);
  }

  function renderNotices(room) {
    if (room !== state.active) return;
    ui.notices.replaceChildren(...room.notices.map((n) => h('div', { class: 'notice', 'data-notice': n.key },
      h('span', {}, n.text),
      dismissButton(() => {
        room.notices = room.notices.filter((other) => other !== n);
        renderNotices(room);
      }))));
  }

  function showError(room, text, code) {
    room.error = { text, code };
    clearTimeout(room.errorTimer);
    room.errorTimer = setTimeout(() => {
      room.error = null;
      renderError(room);
    }, 8000);
    renderError(room);
  }

  function renderError(room) {
    if (room !== state.active) return;
    const error = room.error;
    ui.errors.replaceChildren(...(error ? [h('div', { class: 'error', 'data-code': error.code },
      h('span', {}, error.text),
      dismissButton(() => {
        room.error = null;
        renderError(room);
        ui.message.focus();
      }))] : []));
  }

  function dismissButton(onclick) {
    return h('button', { type: 'button', class: 'icon-button small', 'aria-label': 'Dismiss', onclick },
      svgIcon(CLOSE_ICON));
  }

  function svgIcon(path) {
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    const p = document.createElementNS('http://www.w3.org/2000/svg', 'path');
    p.setAttribute('d', path);
    svg.append(p);
    return svg;
  }

  function setStatus(room, status, detail = '') {
    room.status = status;
    room.detail = detail;
    renderRoomList();
    renderStatus();
    if (room === state.active) {
      ui.composer.classList.toggle('disabled', status === 'refused');
      renderOlder(room);
    }
  }

  function statusText(room) {
    switch (room.status) {
      case 'live': return ['live', 'Connected'];
      case 'connecting': return ['connecting', 'Connecting…'];
      case 'reconnecting': return ['reconnecting', 'Reconnecting…'];
      case 'offline': return ['reconnecting', 'Offline: waiting for the network'];
      case 'waiting': {
        const seconds = Math.max(1, Math.ceil((room.retryAt - now()) / 1000));
        return ['reconnecting', `Disconnected: retrying in ${seconds} s`];
      }
      case 'refused': return ['refused', room.detail || 'Refused'];
      default: return [room.status, room.status];
    }
  }

  function renderStatus() {
    const room = state.active;
    if (!room) return;
    const [kind, text] = statusText(room);
    if (ui.status.dataset.status !== kind) {
      // Screen readers hear the changes of state, not every tick of the countdown.
      ui.statusAnnounce.textContent = { live: 'Connected', connecting: 'Connecting', refused: text }[kind]
        || 'Disconnected, reconnecting';
    }
    ui.status.dataset.status = kind;
    if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
    ui.retryNow.hidden = !(room.status === 'waiting' || room.status === 'offline' || room.status === 'refused');
    ui.retryNow.textContent = room.status === 'refused' ? 'Try again' : 'Retry now';
    document.body.dataset.connection = kind;
  }

  // --- rooms, members, the sidebar -----------------------------------------------------------------

  function renderRoomList() {
    const rooms = [...state.rooms.values()];
    ui.roomList.replaceChildren(...rooms.map((room) => {
      const name = room.name;
      const [kind, text] = statusText(room);
      const current = room === state.active;
      return h('li', { class: current ? 'room active' : 'room', 'data-room': name },
        h('button', {
          type: 'button', class: 'room-button', 'aria-current': current ? 'true' : null,
          title: text, onclick: () => activate(room, true),
        },
        h('span', { class: `room-dot ${kind}`, 'aria-hidden': 'true' }),
        h('span', { class: 'room-name' }, h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'), name),
        room.unread ? h('span', { class: 'badge' }, room.unread > 99 ? '99+' : String(room.unread),
          h('span', { class: 'sr-only' }, ' unread')) : null),
        h('button', {
          type: 'button', class: 'icon-button small leave', 'aria-label': `Leave ${name}`, title: `Leave ${name}`,
          onclick: () => leaveRoom(room),
        }, svgIcon(CLOSE_ICON)));
    }));
    ui.unreadElsewhere.hidden = !rooms.some((room) => room !== state.active && room.unread > 0);
    const total = rooms.reduce((sum, room) => sum + room.unread, 0);
    const title = state.active ? `#${state.active.name} · chat` : 'chat';
    document.title = total ? `(${total}) ${title}` : title;
  }

  function renderMembers(room) {
    if (room !== state.active) return;
    const members = [...room.members.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)));
    ui.memberList.replaceChildren(...members.map((member) => {
      const me = room.me && member.id === room.me.id;
      return h('li', { class: me ? 'member self' : 'member', 'data-member': member.id },
        avatar(String(member.name)),
        h('span', { class: 'member-name' }, String(member.name)),
        me ? h('span', { class: 'you-tag' }, 'you') : null);
    }));
    ui.memberCount.textContent = String(members.length);
    ui.roomSubtitle.textContent = members.length === 1 ? '1 member' : `${members.length} members`;
  }

  function countUnread(room, count) {
    if (!count) return;
    if (room !== state.active || document.hidden) room.unread += count;
    renderRoomList();
  }

  /** The room at the top of the sidebar (undefined when none is joined). */
  function firstRoom() {
    return state.rooms.values().next().value;
  }

  function ensureRoom(name) {
    let room = state.rooms.get(name);
    if (!room) {
      room = newRoom(name);
      state.rooms.set(name, room);
      connect(room);
    }
    return room;
  }

  function activate(room, focus) {
    const previous = state.active;
    if (previous && previous !== room) {
      previous.scrollTop = ui.scroller.scrollTop;
      previous.atBottom = atBottom();
      previous.draft = ui.message.value;
      previous.view.hidden = true;
    }
    state.active = room;
    room.view.hidden = false;
    room.unread = 0;
    ui.roomTitle.replaceChildren(h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'), room.name);
    ui.message.placeholder = `Message #${room.name}`;
    if (previous !== room) {
      ui.message.value = room.draft;
      resizeComposer();
      updateCharCount();
    }
    renderRoomList();
    renderMembers(room);
    renderTyping(room);
    renderNotices(room);
    renderError(room);
    renderStatus();
    renderOlder(room);
    ui.composer.classList.toggle('disabled', room.status === 'refused');
    if (room.atBottom || room.scrollTop == null) scrollToBottom(); else ui.scroller.scrollTop = room.scrollTop;
    updateJump(room);
    syncUrl();
    closeSidebar();
    if (focus) ui.message.focus();
  }

  function leaveRoom(room) {
    room.leaving = true;
    clearTimeout(room.timer);
    clearTimeout(room.typingTimer);
    clearTimeout(room.typingSendTimer);
    clearTimeout(room.errorTimer);
    detach(room);
    room.view.remove();
    state.rooms.delete(room.name);
    if (state.active === room) {
      state.active = null;
      const next = firstRoom();
      if (next) {
        activate(next, true);
      } else {
        syncUrl();
        showSetup('join');
      }
    } else {
      renderRoomList();
      syncUrl();
    }
  }

  function joinRooms(names, activeName) {
    for (const name of names) ensureRoom(name);
    const active = state.rooms.get(activeName) || firstRoom();
    ui.setup.hidden = true;
    ui.app.hidden = false;
    activate(active, true);
  }

  function setName(name) {
    if (name === state.name) return;
    state.name = name;
    try {
      localStorage.setItem('chat.name', name);
    } catch (_) { /* private mode */ }
    ui.meName.textContent = name;
    ui.meAvatar.textContent = initials(name);
    ui.meAvatar.style.setProperty('--hue', String(hue(name)));
    for (const room of state.rooms.values()) connect(room); // rejoin under the new name, recovering
    syncUrl();
  }

  /** The address keeps the name and rooms: /?room=ACTIVE&name=NAME[&rooms=a,b,c]. */
  function syncUrl() {
    const params = new URLSearchParams();
    if (state.active) params.set('room', state.active.name);
    if (state.name) params.set('name', state.name);
    if (state.rooms.size > 1) params.set('rooms', [...state.rooms.keys()].join(','));
    const query = params.toString();
    history.replaceState(null, '', query ? `?${query}` : location.pathname);
  }

  // --- scrolling -----------------------------------------------------------------------------------

  function atBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < BOTTOM_SLACK_PX;
  }

  function scrollToBottom() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }

  function keepBottom(room) {
    return room === state.active ? atBottom() : room.atBottom;
  }

  function afterAppend(room, stick, force) {
    renderOlder(room);
    if (room !== state.active) {
      if (stick || force) room.scrollTop = null;
      return;
    }
    if (stick || force) {
      scrollToBottom();
      room.atBottom = true;
      room.below = 0;
    } else {
      room.below = room.seqs.length ? room.below + 1 : 0;
    }
    updateJump(room);
  }

  function updateJump(room) {
    const show = room === state.active && !atBottom() && room.below > 0;
    ui.jump.hidden = !show;
    ui.jumpText.textContent = room.below === 1 ? '1 new message' : `${room.below} new messages`;
  }

  function onScroll() {
    const room = state.active;
    if (!room) return;
    room.atBottom = atBottom();
    if (room.atBottom) {
      room.below = 0;
      updateJump(room);
    }
    // Near the top by the reader's own scrolling (not a focus or a jump): fetch older messages.
    const byReader = now() - lastReaderScroll < 1000;
    if (byReader && ui.scroller.scrollTop < 120 && !room.noMore && !room.historyRef && room.seqs.length) {
      lastReaderScroll = 0; // one page per gesture: the next needs the reader to scroll again
      loadOlder(room);
    }
  }

  let lastReaderScroll = 0;
  const readerScrolls = () => {
    lastReaderScroll = now();
  };

  // --- the sidebar on narrow screens ---------------------------------------------------------------

  function openSidebar() {
    ui.app.classList.add('sidebar-open');
    ui.scrim.hidden = false;
    ui.openSidebar.setAttribute('aria-expanded', 'true');
    ui.closeSidebar.focus(); // not the room field: on a phone that would pop the keyboard up
  }

  function closeSidebar() {
    if (!ui.app.classList.contains('sidebar-open')) return;
    ui.app.classList.remove('sidebar-open');
    ui.scrim.hidden = true;
    ui.openSidebar.setAttribute('aria-expanded', 'false');
  }

  // --- the setup card ------------------------------------------------------------------------------

  let setupMode = 'join';

  function showSetup(mode, room = '', problem = {}) {
    setupMode = mode;
    const renaming = mode === 'rename';
    ui.setupTitle.textContent = renaming ? 'Change your name' : 'Join a room';
    ui.setupText.textContent = renaming
      ? 'Everyone in your rooms sees the new name from now on.'
      : 'Pick a display name and a room. The address keeps both, so you can share the link.';
    ui.setupRoom.closest('.field').hidden = renaming;
    ui.setupCancel.hidden = !renaming;
    ui.setupSubmit.textContent = renaming ? 'Save' : 'Join';
    let saved = '';
    try {
      saved = localStorage.getItem('chat.name') || '';
    } catch (_) { /* private mode */ }
    ui.setupName.value = state.name || problem.name || saved;
    ui.setupRoom.value = room || 'lobby';
    fieldError(ui.setupName, ui.setupNameError, problem.nameError || '');
    fieldError(ui.setupRoom, ui.setupRoomError, problem.roomError || '');
    ui.setup.hidden = false;
    ui.app.hidden = renaming ? ui.app.hidden : true;
    ui.app.inert = renaming;
    const first = !ui.setupName.value || problem.nameError || renaming ? ui.setupName : ui.setupRoom;
    first.focus();
    if (renaming) ui.setupName.select();
  }

  /** Show a field's problem (or clear it, with ''), under the field and to assistive technology. */
  function fieldError(input, output, text) {
    output.textContent = text;
    input.setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  function hideSetup() {
    ui.setup.hidden = true;
    ui.app.inert = false;
  }

  function onSetupSubmit(event) {
    event.preventDefault();
    const [name, nameError] = validateName(ui.setupName.value);
    const [room, roomError] = setupMode === 'rename' ? [null, ''] : validateRoom(ui.setupRoom.value);
    fieldError(ui.setupName, ui.setupNameError, nameError);
    fieldError(ui.setupRoom, ui.setupRoomError, roomError);
    if (nameError) return ui.setupName.focus();
    if (roomError) return ui.setupRoom.focus();
    hideSetup();
    setName(name);
    if (setupMode === 'rename') ui.message.focus(); else joinRooms([room], room);
    return undefined;
  }

  function onJoinSubmit(event) {
    event.preventDefault();
    const [room, error] = validateRoom(ui.joinRoom.value);
    fieldError(ui.joinRoom, ui.joinError, error);
    if (error) return;
    ui.joinRoom.value = '';
    activate(ensureRoom(room), true);
  }

  async function copyLink() {
    const url = new URL(location.pathname, location.origin);
    url.searchParams.set('room', state.active.name);
    let copied = false;
    try {
      await navigator.clipboard.writeText(url.href);
      copied = true;
    } catch (_) { /* no clipboard: show the link instead */ }
    notice(state.active, 'link', copied ? `Invite link copied: ${url.href}` : `Invite link: ${url.href}`);
  }

  // --- wiring --------------------------------------------------------------------------------------

  function wire() {
    ui.setupForm.addEventListener('submit', onSetupSubmit);
    ui.setupCancel.addEventListener('click', () => {
      hideSetup();
      ui.message.focus();
    });
    ui.changeName.addEventListener('click', () => showSetup('rename'));
    ui.joinForm.addEventListener('submit', onJoinSubmit);
    ui.composer.addEventListener('submit', (event) => {
      event.preventDefault();
      submitMessage();
    });
    ui.message.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submitMessage();
      }
    });
    ui.message.addEventListener('input', onComposerInput);
    ui.send.addEventListener('mousedown', (event) => event.preventDefault()); // keep focus in the box
    ui.scroller.addEventListener('scroll', onScroll, { passive: true });
    for (const type of ['wheel', 'touchmove', 'mousedown']) {
      ui.scroller.addEventListener(type, readerScrolls, { passive: true });
    }
    ui.scroller.addEventListener('keydown', readerScrolls);
    ui.loadOlder.addEventListener('click', () => state.active && loadOlder(state.active));
    ui.jump.addEventListener('click', () => {
      scrollToBottom();
      ui.message.focus();
    });
    ui.retryNow.addEventListener('click', () => state.active && retryNow(state.active));
    ui.copyLink.addEventListener('click', copyLink);
    ui.openSidebar.addEventListener('click', openSidebar);
    ui.closeSidebar.addEventListener('click', closeSidebar);
    ui.scrim.addEventListener('click', closeSidebar);
    document.addEventListener('keydown', (event) => {
      if (event.key !== 'Escape') return;
      closeSidebar();
      if (setupMode === 'rename' && !ui.setup.hidden) {
        hideSetup();
        ui.message.focus();
      }
    });
    new ResizeObserver(() => {
      const room = state.active;
      if (room && room.atBottom) scrollToBottom();
    }).observe(ui.scroller);
    const comeBack = () => {
      for (const room of state.rooms.values()) if (room.status === 'waiting' || room.status === 'offline') connect(room);
    };
    window.addEventListener('online', comeBack);
    window.addEventListener('offline', () => renderStatus());
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) return;
      comeBack();
      if (state.active) {
        state.active.unread = 0;
        renderRoomList();
      }
    });
    setInterval(() => {
      if (state.active && state.active.status === 'waiting') renderStatus();
    }, 1000);
  }

  function boot() {
    wire();
    const params = new URLSearchParams(location.search);
    const wanted = [...(params.get('rooms') || '').split(','), params.get('room') || '']
      .map((name) => name.trim()).filter(Boolean);
    const [room, roomError] = validateRoom(params.get('room') || wanted[0] || '');
    const rooms = [...new Set(wanted.map((name) => validateRoom(name)[0]).filter(Boolean))];
    const rawName = params.get('name');
    const [name, nameError] = validateName(rawName);
    if (name && room) {
      setName(name);
      joinRooms(rooms.length ? rooms : [room], room);
      return;
    }
    showSetup('join', room || params.get('room') || '', {
      name: rawName || '',
      nameError: rawName != null ? nameError : '',
      roomError: params.get('room') != null ? roomError : '',
    });
  }

  boot();
})();
