/* The page: renders what the rooms' protocol clients know, and turns what the person does into calls on them.
 *
 * The page has one connection (a ChatSocket, protocol.js); each joined room has a client on it and a
 * view of its own here (its message list, its outbox, its notices, where the reader was). The clients
 * say what changed through a listener; everything about the page (which room is on screen, scrolling,
 * unread counts, the sidebar, the setup card, the address) lives here.
 */

import { chars, validateName, validateRoom } from './protocol.js';
import { avatar, dayKey, dayLabel, fullFormat, h, hue, initials, richText, svgIcon, timeFormat } from './dom.js';

const KEEP_MESSAGES = 1500; // messages kept per room while reading at the bottom
const GROUP_MS = 5 * 60 * 1000;
const BOTTOM_SLACK_PX = 48;
const ERROR_SHOW_MS = 8000;
const CLOSE_ICON = 'M6 6l12 12M18 6L6 18';

const ERROR_TEXT = {
  rate_limited: 'You are sending too fast. Wait a moment, then try again.',
  too_large: 'That message is too long to send.',
  unavailable: 'The server cannot deliver messages right now. Try again in a moment.',
  unsupported: 'The server did not understand that.',
};

const now = () => Date.now();

/**
 * The chat page in `document`, its rooms on `socket` (a ChatSocket: `socket.room(name, listener)` makes
 * the protocol client of a room, not yet joined; `socket.rename(name)` renames). Returns
 * `start(name, rooms, active)`, to join rooms at once, and `showSetup(mode, room, problem)`, to ask
 * for a name and a room first.
 */
export function createView(socket) {
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
  };

  /** A joined room on the page: its protocol client and its view. */
  function newRoom(name) {
    const list = h('ol', { class: 'messages', 'aria-label': `Messages in ${name}` });
    const outbox = h('ol', { class: 'messages outbox', 'aria-label': 'Messages being sent' });
    const view = h('div', { class: 'view', role: 'log', 'aria-label': `#${name}`, hidden: true }, list, outbox);
    ui.views.append(view);
    const room = {
      name, view, list, outbox, client: null,
      bySeq: new Map(), // seq -> its element
      unread: 0, below: 0, atBottom: true, scrollTop: null, draft: '',
      notices: [], error: null, errorTimer: null,
    };
    room.client = socket.room(name, listener(room));
    return room;
  }

  /** What the page does when the room's client says something changed. */
  function listener(room) {
    return {
      status: () => statusChanged(room),
      welcome: (_, change) => welcomed(room, change),
      message: (_, change) => messageArrived(room, change),
      history: (_, change) => historyArrived(room, change),
      members: () => {
        renderMembers(room);
        renderTyping(room);
      },
      typing: () => renderTyping(room),
      outbox: () => renderOutbox(room),
      paging: () => renderOlder(room),
      error: (_, error) => errorArrived(room, error),
    };
  }

  // --- what the clients say ------------------------------------------------------------------------

  function welcomed(room, { rejoining, recovered, inserted }) {
    renderTyping(room);
    const stick = keepBottom(room);
    if (recovered) {
      insertAll(room, inserted);
      countUnread(room, inserted.length);
    } else {
      if (rejoining) {
        notice(room, 'recovery',
          'Some messages sent while you were disconnected could not be recovered. Showing the latest history.');
      }
      room.list.replaceChildren();
      room.bySeq.clear();
      insertAll(room, inserted);
    }
    statusChanged(room);
    renderOutbox(room);
    renderMembers(room);
    renderOlder(room);
    afterAppend(room, stick, !rejoining);
  }

  function messageArrived(room, { message, before, mine }) {
    const stick = keepBottom(room);
    insert(room, message, before);
    renderTyping(room);
    if (mine) renderOutbox(room); else countUnread(room, 1);
    trimOld(room);
    afterAppend(room, stick || mine, false);
  }

  function historyArrived(room, { inserted, paged }) {
    if (!paged) {
      insertAll(room, inserted); // a gap filler: in its place
      return;
    }
    const active = room === state.active;
    const before = ui.scroller.scrollHeight;
    const top = ui.scroller.scrollTop;
    insertAll(room, inserted);
    if (active) ui.scroller.scrollTop = top + (ui.scroller.scrollHeight - before);
    renderOlder(room);
  }

  function errorArrived(room, { code, detail, pending, historyFailed }) {
    const text = ERROR_TEXT[code] || `The server refused that: ${detail || code}`;
    if (historyFailed) renderOlder(room, 'Could not load older messages.');
    if (pending) renderOutbox(room);
    showError(room, text, code);
  }

  function statusChanged(room) {
    renderRoomList();
    renderStatus();
    if (room === state.active) {
      ui.composer.classList.toggle('disabled', room.client.status === 'refused');
      renderOlder(room);
    }
  }

  // --- the message list ----------------------------------------------------------------------------

  function messageElement(room, message) {
    const sender = message.from || { id: '', name: '?' };
    const ts = Number(message.ts) || 0;
    const when = new Date(ts);
    const mine = room.client.isMine(sender);
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

  /** Show a message before the one with seq `before` (null: at the end), as the client placed it. */
  function insert(room, message, before) {
    const li = messageElement(room, message);
    const next = before == null ? null : room.bySeq.get(before);
    room.bySeq.set(message.seq, li);
    room.list.insertBefore(li, next);
    regroup(li);
    if (next) regroup(next);
  }

  function insertAll(room, inserted) {
    for (const { message, before } of inserted) insert(room, message, before);
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

  /** Reading at the bottom: forget the oldest messages beyond KEEP_MESSAGES (they can be loaded again). */
  function trimOld(room) {
    if (!room.atBottom) return;
    const gone = room.client.forgetOldest(KEEP_MESSAGES);
    if (!gone.length) return;
    for (const seq of gone) {
      room.bySeq.get(seq).remove();
      room.bySeq.delete(seq);
    }
    const { seqs } = room.client;
    if (seqs.length) regroup(room.bySeq.get(seqs[0]));
    renderOlder(room);
  }

  function loadOlder(room) {
    room.client.loadOlder();
  }

  function renderOlder(room, problem) {
    if (room !== state.active) return;
    const { client } = room;
    const loading = client.loadingOlder;
    ui.older.hidden = client.noMore && !client.seqs.length;
    ui.loadOlder.hidden = client.noMore;
    ui.loadOlder.disabled = loading || !client.live;
    ui.loadOlder.textContent = loading ? 'Loading…' : 'Load older messages';
    ui.olderStatus.textContent = problem || (client.noMore ? 'This is the beginning of the room.' : '');
  }

  // --- sending -------------------------------------------------------------------------------------

  function submitMessage() {
    const room = state.active;
    if (!room) return;
    const text = ui.message.value;
    if (!text.trim()) return;
    const problem = room.client.say(text);
    if (problem === 'refused') {
      showError(room, 'You are not in this room: press "Try again" above, or leave it.', 'refused');
      return;
    }
    if (problem === 'too_large') {
      showError(room, 'That message is too long to send.', 'too_large');
      return;
    }
    ui.message.value = '';
    room.draft = '';
    resizeComposer();
    updateCharCount();
    afterAppend(room, true, false);
    ui.message.focus();
  }

  const shownPending = new WeakMap(); // pending message -> {look, el}: an element is rebuilt only when its look changes

  /** Show the outbox as the client holds it, keeping the elements (and the focus) of unchanged entries. */
  function renderOutbox(room) {
    const wanted = room.client.pending.map((pending) => {
      const look = `${pending.state} ${pending.retry} ${pending.reason}`;
      let shown = shownPending.get(pending);
      if (!shown || shown.look !== look) {
        shown = { look, el: pendingElement(room, pending) };
        shownPending.set(pending, shown);
      }
      return shown.el;
    });
    for (const el of [...room.outbox.children]) if (!wanted.includes(el)) el.remove();
    wanted.forEach((el, index) => {
      const there = room.outbox.children[index];
      if (there !== el) room.outbox.insertBefore(el, there || null);
    });
  }

  function pendingElement(room, pending) {
    const { client } = room;
    const label = pending.state === 'failed' ? pending.reason
      : pending.state === 'queued' ? 'Waiting for the connection…' : 'Sending…';
    const actions = pending.state === 'failed' ? h('span', { class: 'pending-actions' },
      pending.retry ? h('button', {
        type: 'button', class: 'link-button', onclick: () => client.retry(pending),
      }, 'Retry') : h('button', {
        type: 'button', class: 'link-button', onclick: () => {
          ui.message.value = pending.text;
          room.draft = pending.text;
          client.discard(pending);
          resizeComposer();
          updateCharCount();
          ui.message.focus();
        },
      }, 'Edit'),
      h('button', { type: 'button', class: 'link-button', onclick: () => client.discard(pending) }, 'Discard'))
      : null;
    return h('li', { class: `message mine pending ${pending.state}` },
      h('div', { class: 'bubble' },
        h('div', { class: 'text' }, pending.text),
        h('div', { class: 'pending-state' }, h('span', {}, label), actions)));
  }

  function onComposerInput() {
    const room = state.active;
    resizeComposer();
    updateCharCount();
    if (!room) return;
    room.draft = ui.message.value;
    room.client.typed(() => (room === state.active ? room.draft : ''));
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

  function renderTyping(room) {
    if (room !== state.active) return;
    const names = room.client.typists();
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
    }, ERROR_SHOW_MS);
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

  function statusText(room) {
    const { client } = room;
    switch (client.status) {
      case 'live': return ['live', 'Connected'];
      case 'connecting': return ['connecting', 'Connecting…'];
      case 'reconnecting': return ['reconnecting', 'Reconnecting…'];
      case 'offline': return ['reconnecting', 'Offline: waiting for the network'];
      case 'waiting': {
        const seconds = Math.max(1, Math.ceil((client.retryAt - now()) / 1000));
        return ['reconnecting', `Disconnected: retrying in ${seconds} s`];
      }
      case 'refused': return ['refused', client.detail || 'Refused'];
      default: return [client.status, client.status];
    }
  }

  function renderStatus() {
    const room = state.active;
    if (!room) return;
    const { status } = room.client;
    const [kind, text] = statusText(room);
    if (ui.status.dataset.status !== kind) {
      // Screen readers hear the changes of state, not every tick of the countdown.
      ui.statusAnnounce.textContent = { live: 'Connected', connecting: 'Connecting', refused: text }[kind]
        || 'Disconnected, reconnecting';
    }
    ui.status.dataset.status = kind;
    if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
    ui.retryNow.hidden = !(status === 'waiting' || status === 'offline' || status === 'refused');
    ui.retryNow.textContent = status === 'refused' ? 'Try again' : 'Retry now';
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
    const { me, members: byId } = room.client;
    const members = [...byId.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)));
    ui.memberList.replaceChildren(...members.map((member) => {
      const self = me && member.id === me.id;
      return h('li', { class: self ? 'member self' : 'member', 'data-member': member.id },
        avatar(String(member.name)),
        h('span', { class: 'member-name' }, String(member.name)),
        self ? h('span', { class: 'you-tag' }, 'you') : null);
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
      room.client.connect();
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
    ui.composer.classList.toggle('disabled', room.client.status === 'refused');
    if (room.atBottom || room.scrollTop == null) scrollToBottom(); else ui.scroller.scrollTop = room.scrollTop;
    updateJump(room);
    syncUrl();
    closeSidebar();
    if (focus) ui.message.focus();
  }

  function leaveRoom(room) {
    room.client.leave();
    clearTimeout(room.errorTimer);
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
    socket.rename(name); // every room rejoins under the new name, recovering what was missed
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
      room.below = room.client.seqs.length ? room.below + 1 : 0;
    }
    updateJump(room);
  }

  function updateJump(room) {
    const show = room === state.active && !atBottom() && room.below > 0;
    ui.jump.hidden = !show;
    ui.jumpText.textContent = room.below === 1 ? '1 new message' : `${room.below} new messages`;
  }

  let lastReaderScroll = 0;
  const readerScrolls = () => {
    lastReaderScroll = now();
  };

  function onScroll() {
    const room = state.active;
    if (!room) return;
    room.atBottom = atBottom();
    if (room.atBottom) {
      room.below = 0;
      updateJump(room);
    }
    // Near the top by the reader's own scrolling (not a focus or a jump): fetch older messages.
    const { client } = room;
    const byReader = now() - lastReaderScroll < 1000;
    if (byReader && ui.scroller.scrollTop < 120 && !client.noMore && !client.loadingOlder && client.seqs.length) {
      lastReaderScroll = 0; // one page per gesture: the next needs the reader to scroll again
      loadOlder(room);
    }
  }

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
    ui.retryNow.addEventListener('click', () => state.active && state.active.client.retryNow());
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
      for (const room of state.rooms.values()) {
        const { status } = room.client;
        if (status === 'waiting' || status === 'offline') room.client.connect();
      }
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
      if (state.active && state.active.client.status === 'waiting') renderStatus();
    }, 1000);
  }

  wire();

  return {
    /** Join `rooms` as `name`, with `active` on screen. */
    start(name, rooms, active) {
      setName(name);
      joinRooms(rooms, active);
    },
    showSetup,
  };
}
