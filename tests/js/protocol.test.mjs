/* chat/static/protocol.js: every room over one socket (protocol v1.1), driven through a fake WebSocket and a fake clock. */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  backoff,
  HEARTBEAT_MS,
  HEARTBEAT_TIMEOUT_MS,
  JOIN_TIMEOUT_MS,
  MAX_FRAME_BYTES,
  retryDelay,
  socketUrl,
  TYPING_SHOW_MS,
  validateName,
  validateRoom,
} from '../../chat/static/protocol.js';
import { ANN, BOB, harness, join, message, messages, MemoryStorage, rejoin, settle, welcome } from './fakes.mjs';

const seqsOf = (inserted) => inserted.map(({ message: m }) => m.seq);
/** Every frame the page sent for `room`, on any of its sockets. */
const sentFor = (h, room) => h.sockets.flatMap((socket) => socket.frames()).filter((frame) => frame.room === room);

describe('one socket for every room', () => {
  test('the socket goes to /ws with the name alone: since and epoch belong in each join', () => {
    const h = harness();
    h.client.connect();
    assert.equal(h.socket.url, 'ws://chat.test/chat/ws?name=Ann');
    assert.equal(h.client.status, 'connecting');
  });

  test('an https page connects with wss', () => {
    assert.equal(socketUrl('https://chat.test/', 'Ann Lee'), 'wss://chat.test/ws?name=Ann+Lee');
  });

  test('nothing is joined before the hello; then every room asked for joins on the one socket', () => {
    const h = harness();
    const dev = h.room('dev');
    const ops = h.room('ops');
    h.client.connect();
    dev.client.connect();
    ops.client.connect();
    assert.equal(h.sockets.length, 1);
    h.socket.open();
    assert.deepEqual(h.socket.frames(), []);
    h.socket.receive({ type: 'hello', you: ANN });
    assert.deepEqual(h.socket.frames(), [
      { type: 'join', room: 'lobby', ref: 'j1' },
      { type: 'join', room: 'dev', ref: 'j2' },
      { type: 'join', room: 'ops', ref: 'j3' },
    ]);
    assert.deepEqual(h.chat.me, ANN);
    assert.equal(h.client.status, 'connecting', 'joining until its welcome');
  });

  test('a room joined while the socket is live sends its join at once, on the same socket', () => {
    const h = harness();
    join(h);
    const dev = h.room('dev');
    dev.client.connect();
    assert.equal(h.sockets.length, 1);
    assert.deepEqual(h.socket.frames().at(-1), { type: 'join', room: 'dev', ref: 'j2' });
    h.socket.receive(welcome({ room: 'dev', ref: 'j2' }));
    assert.equal(dev.client.status, 'live');
  });

  test('a room created but not asked to join is not joined', () => {
    const h = harness();
    h.room('later');
    join(h);
    assert.deepEqual(Object.keys(h.socket.joins()), ['lobby']);
  });

  test('frames go to the room they name, and only there', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h, { history: messages(1) });
    join(h, { history: [message(1, BOB, 'dev 1', 'dev')] }, dev.client);
    h.socket.receive(message(2, BOB, 'dev 2', 'dev'));
    h.socket.receive({ type: 'typing', room: 'dev', from: BOB });
    assert.deepEqual(dev.client.seqs, [1, 2]);
    assert.deepEqual(h.client.seqs, [1]);
    assert.deepEqual(dev.client.typists(), ['Bob']);
    assert.deepEqual(h.client.typists(), []);
    assert.deepEqual(h.eventsOf('message'), []);
  });

  test('frames for a room not on the page, and frames naming no room, reach no room', () => {
    const h = harness();
    join(h);
    const before = h.events.length;
    h.socket.receive(message(1, BOB, 'elsewhere', 'attic'));
    h.socket.receive({ type: 'message', seq: 1, from: BOB, text: 'nowhere', ts: 1 });
    assert.deepEqual(h.events.slice(before), []);
    assert.deepEqual(h.client.seqs, []);
  });

  test('what a room sends names the room', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    join(h, { room: 'dev' }, dev.client);
    dev.client.say('hi dev');
    dev.client.typed(() => 'x');
    h.client.say('hi lobby');
    assert.deepEqual(h.socket.said(), [
      { type: 'message', room: 'dev', text: 'hi dev', ref: 'm1' },
      { type: 'typing', room: 'dev' },
      { type: 'message', room: 'lobby', text: 'hi lobby', ref: 'm2' },
    ]);
  });

  test('a socket without a hello within 10 s is given up and retried', () => {
    const h = harness();
    h.client.connect();
    h.socket.open();
    h.clock.advance(JOIN_TIMEOUT_MS - 1);
    assert.equal(h.sockets.length, 1);
    h.clock.advance(1);
    assert.equal(h.sockets[0].closedWith, 1000);
    assert.equal(h.client.status, 'waiting');
  });

  test('text that is not a JSON object, and binary messages, are ignored', () => {
    const h = harness();
    const socket = join(h);
    const before = h.events.length;
    socket.receive('not json');
    socket.receive('[1,2]');
    socket.receive('null');
    socket.receive(new ArrayBuffer(4));
    assert.deepEqual(h.events.slice(before), []);
    assert.equal(h.client.live, true);
  });

  test('frames of unknown type (and pong) change nothing', () => {
    const h = harness();
    const socket = join(h);
    const before = h.events.length;
    socket.receive({ type: 'pong', ref: 'p1' });
    socket.receive({ type: 'from-the-future', x: 1 });
    socket.receive({ type: 'from-the-future', room: 'lobby', x: 1 });
    assert.deepEqual(h.events.slice(before), []);
  });

  test('a later socket replaces the earlier one, whose late frames are ignored', () => {
    const h = harness();
    const old = join(h, { history: messages(1) });
    h.chat.connect();
    old.receive(message(2));
    assert.deepEqual(h.client.seqs, [1]);
    assert.equal(old.closedWith, 1000);
  });
});

describe('joining', () => {
  test('welcome makes the room live with its identity, members, epoch and history in order', () => {
    const h = harness();
    join(h, { history: messages(1, 2, 3), seq: 3, epoch: 'E1' });
    assert.equal(h.client.status, 'live');
    assert.equal(h.client.live, true);
    assert.deepEqual(h.client.me, ANN);
    assert.deepEqual([...h.client.members.keys()], ['a1', 'b1']);
    assert.equal(h.client.epoch, 'E1');
    assert.equal(h.client.lastSeq, 3);
    assert.deepEqual(h.client.seqs, [1, 2, 3]);
    const [change] = h.eventsOf('welcome');
    assert.equal(change.rejoining, false);
    assert.equal(change.recovered, false);
    const placed = change.inserted.map(({ message: m, before }) => [m.seq, before]);
    assert.deepEqual(placed, [[1, null], [2, null], [3, null]]);
  });

  test('welcome seq beyond its history is the last seq seen', () => {
    const h = harness();
    join(h, { history: messages(7, 8), seq: 9 });
    assert.equal(h.client.lastSeq, 9);
  });

  test('a join without a welcome within 10 s is asked again, and the others stay live', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.clock.advance(JOIN_TIMEOUT_MS);
    assert.equal(dev.client.status, 'waiting');
    assert.equal(h.client.status, 'live');
    assert.equal(h.socket.closedWith, null);
    h.clock.advance(dev.client.retryAt - h.clock.now());
    assert.deepEqual(sentFor(h, 'dev').map((f) => f.ref), ['j2', 'j3']);
    assert.equal(dev.client.status, 'connecting');
  });

  test('a welcome that comes late is taken, and the second join refused as already joined changes nothing', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.clock.advance(JOIN_TIMEOUT_MS);
    h.clock.advance(dev.client.retryAt - h.clock.now());
    h.socket.receive(welcome({ room: 'dev', ref: 'j2', history: messages(1) }));
    h.socket.receive({ type: 'error', room: 'dev', code: 'bad_request', detail: 'already joined', ref: 'j3' });
    assert.equal(dev.client.status, 'live');
    assert.deepEqual(dev.eventsOf('error'), []);
    h.clock.advance(60 * 1000);
    assert.equal(sentFor(h, 'dev').length, 2);
  });
});

describe('leaving', () => {
  test('a room left sends leave and hears nothing more, the others go on', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    join(h, { room: 'dev' }, dev.client);
    dev.client.leave();
    assert.deepEqual(h.socket.frames().at(-1), { type: 'leave', room: 'dev', ref: 'l1' });
    h.socket.receive({ type: 'left', room: 'dev', ref: 'l1', reason: null });
    h.socket.receive(message(1, BOB, 'after', 'dev'));
    assert.deepEqual(dev.client.seqs, []);
    assert.equal(h.socket.closedWith, null);
    assert.equal(h.client.live, true);
  });

  test('the last room left closes the socket, which never comes back', () => {
    const h = harness();
    const socket = join(h);
    h.client.leave();
    assert.deepEqual(socket.frames().at(-1), { type: 'leave', room: 'lobby', ref: 'l1' });
    assert.equal(socket.closedWith, 1000);
    socket.drop(1000);
    h.clock.advance(60 * 60 * 1000);
    assert.equal(h.sockets.length, 1);
    assert.equal(h.chat.status, 'idle');
  });

  test('a room left while the socket is down leaves nothing to send', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    join(h, { room: 'dev' }, dev.client);
    h.socket.drop(1006);
    dev.client.leave();
    rejoin(h);
    assert.deepEqual(Object.keys(h.socket.joins()), ['lobby']);
    assert.deepEqual(h.socket.said(), []);
  });

  test('the answer to an earlier client\'s leave does not touch the room joined again', () => {
    const h = harness();
    join(h);
    h.client.leave();
    const again = h.room('lobby');
    join(h, {}, again.client);
    h.socket.receive({ type: 'left', room: 'lobby', ref: 'l1', reason: null });
    assert.equal(again.client.status, 'live');
  });
});

describe('the server takes a room away', () => {
  test('left with reason restart joins that room again soon, with its since and epoch', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h, { history: messages(1, 2), epoch: 'E7' });
    join(h, { room: 'dev' }, dev.client);
    h.socket.receive({ type: 'left', room: 'lobby', ref: null, reason: 'restart' });
    assert.equal(h.client.live, false);
    assert.equal(dev.client.live, true);
    assert.equal(h.client.retryAt - h.clock.now(), 150);
    h.clock.advance(150);
    assert.deepEqual(h.socket.joins().lobby, { type: 'join', room: 'lobby', since: 2, epoch: 'E7', ref: 'j3' });
    assert.equal(h.client.status, 'reconnecting');
    assert.equal(h.sockets.length, 1);
  });

  test('after a restart the new epoch resets the room, as it says', () => {
    const h = harness();
    join(h, { history: messages(5, 6), epoch: 'E1' });
    h.socket.receive({ type: 'left', room: 'lobby', ref: null, reason: 'restart' });
    h.clock.advance(1000);
    h.socket.receive(welcome({ ref: 'j2', history: messages(1), recovered: false, epoch: 'E2' }));
    const change = h.eventsOf('welcome')[1];
    assert.equal(change.rejoining, true);
    assert.equal(change.recovered, false);
    assert.deepEqual(h.client.seqs, [1]);
    assert.equal(h.client.epoch, 'E2');
  });

  test('left with reason removed shows the room removed, never rejoins it, and spares the others', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    join(h, { room: 'dev' }, dev.client);
    h.socket.receive({ type: 'left', room: 'lobby', ref: null, reason: 'removed' });
    assert.equal(h.client.status, 'refused');
    assert.equal(h.client.detail, 'You were removed from this room.');
    assert.equal(h.client.say('still here?'), 'refused');
    assert.equal(dev.client.status, 'live');
    h.clock.advance(60 * 60 * 1000);
    assert.equal(sentFor(h, 'lobby').filter((f) => f.type === 'join').length, 1);
  });

  test('a removed room stays removed across a reconnect, until the person tries again', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h, { history: messages(1), epoch: 'E1' });
    join(h, { room: 'dev' }, dev.client);
    h.socket.receive({ type: 'left', room: 'lobby', ref: null, reason: 'removed' });
    h.socket.drop(1006);
    rejoin(h, { room: 'dev' });
    assert.deepEqual(Object.keys(h.socket.joins()), ['dev']);
    assert.equal(h.client.status, 'refused');
    h.client.retryNow();
    assert.deepEqual(h.socket.joins().lobby, { type: 'join', room: 'lobby', since: 1, epoch: 'E1', ref: 'j4' });
  });
});

describe('refused joins', () => {
  test('a forbidden room shows why in that room only and does not retry', () => {
    const h = harness();
    const dev = h.room('dev');
    h.client.connect();
    dev.client.connect();
    h.socket.greet();
    h.socket.receive({ type: 'error', room: 'dev', code: 'forbidden', detail: 'not allowed', ref: 'j2' });
    h.socket.receive(welcome({ ref: 'j1' }));
    assert.equal(dev.client.status, 'refused');
    assert.equal(dev.client.detail, 'The server refused to let you join this room.');
    assert.deepEqual(dev.eventsOf('error'), []);
    assert.equal(h.client.status, 'live');
    assert.deepEqual(h.eventsOf('error'), []);
    h.clock.advance(60 * 60 * 1000);
    assert.equal(sentFor(h, 'dev').length, 1);
    assert.equal(dev.client.say('hello'), 'refused');
    assert.deepEqual(dev.client.pending, []);
  });

  test('too many rooms is a refusal that says so', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.socket.receive({ type: 'error', room: 'dev', code: 'too_many_rooms', detail: 'max 100', ref: 'j2' });
    assert.equal(dev.client.status, 'refused');
    assert.match(dev.client.detail, /too many rooms/);
  });

  test('a join refused as unavailable is asked again with backoff, and the others are unaffected', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.socket.receive({ type: 'error', room: 'dev', code: 'unavailable', detail: 'backend', ref: 'j2' });
    assert.equal(dev.client.status, 'waiting');
    assert.equal(dev.client.retryAt - h.clock.now(), 2000, 'a busy server is given at least 2 s');
    assert.equal(h.client.status, 'live');
    h.clock.advance(1999);
    assert.equal(sentFor(h, 'dev').length, 1);
    h.clock.advance(1);
    assert.deepEqual(h.socket.joins().dev, { type: 'join', room: 'dev', ref: 'j3' });
    h.socket.receive({ type: 'error', room: 'dev', code: 'unavailable', detail: 'backend', ref: 'j3' });
    assert.equal(dev.client.retryAt - h.clock.now(), 2000);
    h.clock.advance(2000);
    h.socket.receive(welcome({ room: 'dev', ref: 'j4' }));
    assert.equal(dev.client.status, 'live');
    assert.equal(h.sockets.length, 1);
  });

  test('a join refused for the rate is asked again, not given up', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.socket.receive({ type: 'error', room: 'dev', code: 'rate_limited', detail: 'slow down', ref: 'j2' });
    assert.equal(dev.client.status, 'waiting');
    h.clock.advance(dev.client.retryAt - h.clock.now());
    assert.equal(h.socket.joins().dev.ref, 'j3');
  });

  test('a room waiting to join again joins at once when asked', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.socket.receive({ type: 'error', room: 'dev', code: 'unavailable', detail: 'backend', ref: 'j2' });
    dev.client.connect();
    assert.equal(h.socket.joins().dev.ref, 'j3');
    h.clock.advance(5000);
    assert.equal(sentFor(h, 'dev').length, 2, 'its timer is off');
  });

  test('try again sends a refused room\'s join again', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    dev.client.connect();
    h.socket.receive({ type: 'error', room: 'dev', code: 'forbidden', detail: 'no', ref: 'j2' });
    dev.client.retryNow();
    assert.equal(h.socket.joins().dev.ref, 'j3');
    assert.equal(dev.client.status, 'connecting');
    assert.equal(h.sockets.length, 1);
  });

  test('an error for another request of a joining room is no refusal', () => {
    const h = harness();
    join(h);
    const dev = h.room('dev');
    dev.client.connect();
    h.socket.receive({ type: 'error', room: 'dev', code: 'bad_request', detail: 'not joined', ref: null });
    assert.equal(dev.client.status, 'connecting');
    assert.equal(dev.eventsOf('error').length, 1);
  });
});

describe('the socket refused', () => {
  test('a close with 1008 before the hello is a refusal of every room: its reason shows and nothing retries', () => {
    const h = harness();
    const dev = h.room('dev');
    h.client.connect();
    dev.client.connect();
    h.socket.open();
    h.socket.drop(1008, 'bad name');
    h.clock.advance(60 * 60 * 1000);
    for (const client of [h.client, dev.client]) {
      assert.equal(client.status, 'refused');
      assert.equal(client.detail, 'bad name');
    }
    assert.equal(h.sockets.length, 1);
  });

  test('a close with 1008 after the hello is a close like any other: reconnect and rejoin', () => {
    const h = harness();
    join(h);
    h.socket.drop(1008, 'too many bad frames');
    assert.equal(h.client.status, 'waiting');
    h.clock.advance(h.chat.retryAt - h.clock.now());
    assert.equal(h.sockets.length, 2);
  });

  test('a handshake refused twice while /healthz answers is a refusal', async () => {
    const h = harness({ reachable: true });
    h.client.connect();
    h.socket.drop(1006);
    await settle();
    assert.equal(h.client.status, 'waiting');
    assert.ok(h.client.retryAt - h.clock.now() <= 600);
    h.clock.advance(600);
    h.socket.drop(1006);
    await settle();
    assert.equal(h.client.status, 'refused');
    h.clock.advance(10 * 60 * 1000);
    assert.equal(h.sockets.length, 2);
  });

  test('try again on a refused socket connects again, and every room joins', async () => {
    const h = harness({ reachable: true });
    const dev = h.room('dev');
    h.client.connect();
    dev.client.connect();
    for (let attempt = 0; attempt < 2; attempt += 1) {
      h.socket.drop(1006);
      await settle();
      h.clock.advance(600);
    }
    assert.equal(dev.client.status, 'refused');
    dev.client.retryNow();
    assert.equal(h.sockets.length, 3);
    h.socket.greet();
    assert.deepEqual(Object.keys(h.socket.joins()), ['lobby', 'dev']);
  });

  test('failed handshakes while the server is away keep retrying', async () => {
    const h = harness({ reachable: false });
    h.client.connect();
    for (let attempt = 0; attempt < 3; attempt += 1) {
      h.socket.drop(1006);
      await settle();
      assert.equal(h.client.status, 'waiting');
      h.clock.advance(h.client.retryAt - h.clock.now());
    }
    assert.equal(h.sockets.length, 4);
  });
});

describe('ordering and deduplication by seq', () => {
  test('a message already held is dropped, however often it comes', () => {
    const h = harness();
    const socket = join(h, { history: messages(1, 2, 3) });
    socket.receive(message(3));
    socket.receive(message(2));
    assert.deepEqual(h.eventsOf('message'), []);
    assert.deepEqual(h.client.seqs, [1, 2, 3]);
  });

  test('a late message is placed by its seq, not at the end', () => {
    const h = harness();
    const socket = join(h, { history: messages(1, 2) });
    socket.receive(message(4));
    socket.receive(message(3));
    const change = h.eventsOf('message')[1];
    assert.equal(change.message.seq, 3);
    assert.equal(change.before, 4);
    assert.deepEqual(h.client.seqs, [1, 2, 3, 4]);
    assert.equal(h.client.lastSeq, 4);
  });

  test('the next message is appended and raises the last seq', () => {
    const h = harness();
    const socket = join(h, { history: messages(1) });
    socket.receive(message(2));
    const [change] = h.eventsOf('message');
    assert.equal(change.message.seq, 2);
    assert.equal(change.before, null);
    assert.equal(change.mine, false);
    assert.equal(h.client.lastSeq, 2);
  });

  test('a message past a gap asks for exactly the missing ones', () => {
    const h = harness();
    const socket = join(h, { history: messages(1, 2) });
    socket.receive(message(6));
    assert.deepEqual(socket.said(), [{ type: 'history', room: 'lobby', before: 6, limit: 3, ref: 'g1' }]);
  });

  test('the missing messages are placed before the one past the gap', () => {
    const h = harness();
    const socket = join(h, { history: messages(1, 2) });
    socket.receive(message(5));
    socket.receive({ type: 'history', room: 'lobby', ref: 'g1', messages: messages(3, 4) });
    const [change] = h.eventsOf('history');
    assert.equal(change.paged, false);
    assert.deepEqual(change.inserted.map(({ message: m, before }) => [m.seq, before]), [[3, 5], [4, 5]]);
    assert.deepEqual(h.client.seqs, [1, 2, 3, 4, 5]);
  });

  test('a gap asks for at most 100 messages', () => {
    const h = harness();
    const socket = join(h, { history: messages(1) });
    socket.receive(message(500));
    assert.equal(socket.said()[0].limit, 100);
  });

  test('forgetting the oldest lets them be loaded and placed again', () => {
    const h = harness();
    const socket = join(h, { history: messages(1, 2, 3, 4) });
    assert.equal(h.client.noMore, true);
    assert.deepEqual(h.client.forgetOldest(2), [1, 2]);
    assert.deepEqual(h.client.forgetOldest(2), []);
    assert.equal(h.client.noMore, false);
    h.client.loadOlder();
    socket.receive({ type: 'history', room: 'lobby', ref: 'h1', messages: messages(1, 2) });
    assert.deepEqual(h.client.seqs, [1, 2, 3, 4]);
  });
});

describe('recovery after a drop', () => {
  test('one socket comes back, and the room rejoins with what came after the last seq seen, in the same epoch', () => {
    const h = harness();
    const socket = join(h, { history: messages(1, 2), epoch: 'E7' });
    socket.receive(message(3));
    socket.drop(1006);
    h.clock.advance(500);
    assert.equal(h.sockets.length, 2);
    assert.deepEqual(h.socket.query(), { name: 'Ann' });
    assert.equal(h.client.status, 'reconnecting');
    h.socket.greet();
    assert.deepEqual(h.socket.frames(), [{ type: 'join', room: 'lobby', since: 3, epoch: 'E7', ref: 'j2' }]);
  });

  test('every room rejoins on the one new socket with its own since and epoch', () => {
    const h = harness();
    const dev = h.room('dev');
    const ops = h.room('ops');
    join(h, { history: messages(1, 2), epoch: 'E1' });
    join(h, { history: [message(7, BOB, 'dev', 'dev')], epoch: 'D1' }, dev.client);
    ops.client.connect(); // never welcomed: joins afresh
    h.socket.drop(1006);
    for (const client of [h.client, dev.client, ops.client]) assert.equal(client.status, 'waiting');
    h.clock.advance(500);
    assert.equal(h.sockets.length, 2);
    h.socket.greet();
    assert.deepEqual(h.socket.frames(), [
      { type: 'join', room: 'lobby', since: 2, epoch: 'E1', ref: 'j4' },
      { type: 'join', room: 'dev', since: 7, epoch: 'D1', ref: 'j5' },
      { type: 'join', room: 'ops', ref: 'j6' },
    ]);
    h.socket.receive(welcome({ room: 'dev', epoch: 'D1', recovered: true, history: [message(8, BOB, 'x', 'dev')] }));
    h.socket.receive(welcome({ epoch: 'E1', recovered: true, history: messages(3) }));
    assert.deepEqual(dev.client.seqs, [7, 8]);
    assert.deepEqual(h.client.seqs, [1, 2, 3]);
    assert.equal(ops.client.status, 'connecting');
  });

  test('a recovered welcome adds only what was missed, after what was held', () => {
    const h = harness();
    join(h, { history: messages(1, 2) });
    h.socket.drop(1006);
    rejoin(h, { history: messages(2, 3, 4), recovered: true });
    const change = h.eventsOf('welcome')[1];
    assert.equal(change.rejoining, true);
    assert.equal(change.recovered, true);
    assert.deepEqual(seqsOf(change.inserted), [3, 4]);
    assert.deepEqual(h.client.seqs, [1, 2, 3, 4]);
  });

  test('an unrecovered welcome replaces what was held with the latest history', () => {
    const h = harness();
    join(h, { history: messages(5, 6) });
    h.socket.drop(1012);
    rejoin(h, { history: messages(1), recovered: false, epoch: 'E2' });
    const change = h.eventsOf('welcome')[1];
    assert.equal(change.recovered, false);
    assert.deepEqual(seqsOf(change.inserted), [1]);
    assert.deepEqual(h.client.seqs, [1]);
    assert.equal(h.client.lastSeq, 1);
    assert.equal(h.client.epoch, 'E2');
  });

  test('a welcome in another epoch is no recovery, whatever it says', () => {
    const h = harness();
    join(h, { history: messages(1, 2), epoch: 'E1' });
    h.socket.drop(1006);
    rejoin(h, { history: messages(1), recovered: true, epoch: 'E2' });
    assert.equal(h.eventsOf('welcome')[1].recovered, false);
    assert.deepEqual(h.client.seqs, [1]);
  });

  test('a rename reconnects the one socket at once under the new name, and every room rejoins recovering', () => {
    const h = harness();
    const dev = h.room('dev');
    join(h, { history: messages(1), epoch: 'E1' });
    join(h, { room: 'dev', history: [message(4, BOB, 'x', 'dev')], epoch: 'D1' }, dev.client);
    h.chat.rename('Ann Lee');
    assert.equal(h.sockets.length, 2);
    assert.equal(h.sockets[0].closedWith, 1000);
    assert.deepEqual(h.socket.query(), { name: 'Ann Lee' });
    h.socket.greet();
    assert.deepEqual(h.socket.frames(), [
      { type: 'join', room: 'lobby', since: 1, epoch: 'E1', ref: 'j3' },
      { type: 'join', room: 'dev', since: 4, epoch: 'D1', ref: 'j4' },
    ]);
  });

  test('the same name again changes nothing', () => {
    const h = harness();
    join(h);
    h.chat.rename('Ann');
    assert.equal(h.sockets.length, 1);
  });
});

describe('backoff', () => {
  test('each wait is half its step fixed and half random, the step doubling from 0.5 s to 15 s', () => {
    assert.equal(backoff(0, () => 0), 250);
    assert.equal(backoff(0, () => 0.999), 250 + 0.999 * 250);
    assert.equal(backoff(1, () => 0), 500);
    assert.equal(backoff(4, () => 0), 4000);
    assert.equal(backoff(5, () => 0), 7500);
    assert.equal(backoff(50, () => 0), 7500);
    assert.ok(backoff(50, () => 0.999) < 15000);
  });

  test('after 1012 (restart) the first retry is spread over 0.15-0.75 s', () => {
    assert.equal(retryDelay(0, 1012, false, () => 0), 150);
    assert.ok(retryDelay(0, 1012, false, () => 0.999) < 750);
    assert.equal(retryDelay(1, 1012, false, () => 0), 500);
  });

  test('after 1013 (busy) it waits at least 2-4 s', () => {
    assert.equal(retryDelay(0, 1013, false, () => 0), 2000);
    assert.equal(retryDelay(6, 1013, false, () => 0), 7500);
  });

  test('a server that answers HTTP is tried again within 0.3-0.6 s', () => {
    assert.equal(retryDelay(5, 1006, true, () => 0), 300);
    assert.equal(retryDelay(5, 1006, true, () => 0.5), 450);
  });

  test('a restarting server (1012) is rejoined sooner than the backoff', () => {
    const h = harness();
    join(h);
    h.socket.drop(1012);
    assert.equal(h.client.retryAt - h.clock.now(), 150);
  });

  test('a busy server (1013) is given at least 2 s', () => {
    const h = harness();
    join(h);
    h.socket.drop(1013);
    assert.equal(h.client.retryAt - h.clock.now(), 2000);
  });

  test('the next try comes when the wait is over, not before', () => {
    const h = harness();
    join(h);
    h.socket.drop(1006);
    h.clock.advance(249);
    assert.equal(h.sockets.length, 1);
    h.clock.advance(1);
    assert.equal(h.sockets.length, 2);
  });

  test('each failed handshake waits twice as long as the one before', async () => {
    const h = harness();
    join(h);
    h.socket.drop(1006);
    const waits = [h.client.retryAt - h.clock.now()];
    for (let attempt = 1; attempt < 5; attempt += 1) {
      h.clock.advance(waits[waits.length - 1]);
      h.socket.drop(1006); // never opened, and nobody answers /healthz
      await settle();
      waits.push(h.client.retryAt - h.clock.now());
    }
    assert.deepEqual(waits, [250, 500, 1000, 2000, 4000]);
    assert.equal(h.sockets.length, 5);
  });

  test('a welcome starts the backoff over', async () => {
    const h = harness();
    join(h);
    h.socket.drop(1006);
    h.clock.advance(250);
    h.socket.drop(1006);
    await settle();
    h.clock.advance(500);
    h.socket.greet();
    h.socket.receive(welcome({ recovered: true }));
    h.socket.drop(1006);
    assert.equal(h.client.retryAt - h.clock.now(), 250);
  });

  test('a wait while the network is away says so', () => {
    const h = harness({ online: false });
    join(h);
    h.socket.drop(1006);
    assert.equal(h.client.status, 'offline');
  });

  test('retry now connects at once and forgets the waits', () => {
    const h = harness();
    join(h);
    h.socket.drop(1013);
    h.client.retryNow();
    assert.equal(h.sockets.length, 2);
    h.clock.advance(2000);
    assert.equal(h.sockets.length, 2, 'the retry that was waiting is off');
    h.socket.open();
    h.socket.drop(1006);
    assert.equal(h.client.retryAt - h.clock.now(), 250);
  });
});

describe('heartbeat', () => {
  test('after 25 s of silence it pings', () => {
    const h = harness();
    const socket = join(h);
    h.clock.advance(HEARTBEAT_MS - 1);
    assert.deepEqual(socket.said(), []);
    h.clock.advance(5000);
    assert.deepEqual(socket.said(), [{ type: 'ping', ref: 'p1' }]);
  });

  test('no answer to the ping within 10 s gives the socket up', () => {
    const h = harness();
    const socket = join(h);
    h.clock.advance(HEARTBEAT_MS);
    h.clock.advance(HEARTBEAT_TIMEOUT_MS - 1);
    assert.equal(socket.closedWith, null);
    assert.equal(socket.said().length, 1, 'one ping, not one every check');
    h.clock.advance(1);
    assert.equal(socket.closedWith, 1000);
    assert.equal(h.client.live, false);
    assert.equal(h.client.status, 'waiting');
  });

  test('an answer keeps the socket', () => {
    const h = harness();
    const socket = join(h);
    h.clock.advance(HEARTBEAT_MS);
    socket.receive({ type: 'pong', ref: 'p1' });
    h.clock.advance(HEARTBEAT_TIMEOUT_MS);
    assert.equal(socket.closedWith, null);
    assert.equal(h.client.live, true);
  });

  test('after an answer, the next silence is pinged again', () => {
    const h = harness();
    const socket = join(h);
    h.clock.advance(HEARTBEAT_MS);
    socket.receive({ type: 'pong', ref: 'p1' });
    h.clock.advance(HEARTBEAT_MS + 5000);
    assert.deepEqual(socket.said().map((frame) => frame.ref), ['p1', 'p2']);
  });
});

describe('sending and acks', () => {
  test('a message goes out with a ref and waits in the outbox as sent', () => {
    const h = harness();
    const socket = join(h);
    assert.equal(h.client.say('hi'), null);
    assert.deepEqual(socket.said(), [{ type: 'message', room: 'lobby', text: 'hi', ref: 'm1' }]);
    assert.deepEqual(h.client.pending.map((p) => [p.ref, p.state]), [['m1', 'sent']]);
  });

  test('the own message, arriving, leaves the outbox', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('hi');
    socket.receive(message(1, ANN, 'hi'));
    assert.deepEqual(h.client.pending, []);
    assert.equal(h.eventsOf('message')[0].mine, true);
  });

  test('an ack for a seq already shown takes its message out of the outbox, whatever the text', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('hi');
    socket.receive(message(1, ANN, 'hi, as the server put it'));
    assert.equal(h.client.pending.length, 1);
    socket.receive({ type: 'ack', room: 'lobby', ref: 'm1', seq: 1 });
    assert.deepEqual(h.client.pending, []);
  });

  test('an ack before its message (Redis) matches the message by seq when it comes', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('same');
    h.client.say('same');
    socket.receive({ type: 'ack', room: 'lobby', ref: 'm2', seq: 2 });
    socket.receive(message(1, ANN, 'same'));
    assert.deepEqual(h.client.pending.map((p) => p.ref), ['m2']);
    socket.receive(message(2, ANN, 'same'));
    assert.deepEqual(h.client.pending, []);
  });

  test('an ack with a ref nobody sent changes nothing', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('hi');
    socket.receive({ type: 'ack', room: 'lobby', ref: 'm99', seq: 1 });
    assert.deepEqual(h.client.pending.map((p) => [p.ref, p.seq, p.state]), [['m1', null, 'sent']]);
  });

  test('a message too large for a frame is refused before it is sent', () => {
    const h = harness();
    const socket = join(h);
    assert.equal(h.client.say('x'.repeat(MAX_FRAME_BYTES)), 'too_large');
    assert.deepEqual(socket.said(), []);
    assert.deepEqual(h.client.pending, []);
  });

  test('what is said while disconnected waits, and goes out after the rejoin', () => {
    const h = harness();
    join(h);
    h.socket.drop(1006);
    h.client.say('in the tunnel');
    assert.equal(h.client.pending[0].state, 'queued');
    rejoin(h);
    assert.deepEqual(h.socket.said(), [{ type: 'message', room: 'lobby', text: 'in the tunnel', ref: 'm1' }]);
    assert.equal(h.client.pending[0].state, 'sent');
  });

  test('after a rejoin, a sent message found in the history leaves the outbox', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('made it');
    socket.drop(1006);
    rejoin(h, { history: [message(1, ANN, 'made it')] });
    assert.deepEqual(h.client.pending, []);
  });

  test('after a recovered rejoin, a sent message not in the history was not sent', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('lost');
    socket.drop(1006);
    rejoin(h);
    assert.deepEqual(h.client.pending.map((p) => [p.state, p.reason, p.retry]),
      [['failed', 'Not sent: the connection dropped', true]]);
  });

  test('after an unrecovered rejoin, a sent message not in the history may not have been sent', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('lost?');
    socket.drop(1012);
    rejoin(h, { recovered: false, epoch: 'E2' });
    assert.deepEqual(h.client.pending.map((p) => [p.state, p.reason]),
      [['failed', 'Maybe not sent: the connection dropped']]);
  });

  test('a failed message is sent again under a new ref', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('again');
    socket.receive({ type: 'error', code: 'rate_limited', detail: 'slow down', ref: 'm1' });
    h.client.retry(h.client.pending[0]);
    assert.deepEqual(socket.said().map((f) => f.ref), ['m1', 'm2']);
    assert.equal(h.client.pending[0].state, 'sent');
  });

  test('a discarded message leaves the outbox', () => {
    const h = harness();
    join(h);
    h.client.say('never mind');
    h.client.discard(h.client.pending[0]);
    assert.deepEqual(h.client.pending, []);
    assert.equal(h.eventsOf('outbox').length, 2);
  });

  test('own messages from an earlier connection (stored per room) count as mine', () => {
    const storage = new MemoryStorage();
    join(harness({ storage }), { you: { id: 'old', name: 'Ann' } });
    const h = harness({ storage });
    join(h, { you: { id: 'new', name: 'Ann' } });
    assert.equal(h.client.isMine({ id: 'old' }), true);
    assert.equal(h.client.isMine({ id: 'new' }), true);
    assert.equal(h.client.isMine(BOB), false);
  });
});

describe('acks and errors, per room', () => {
  /** Lobby and dev, both live on the one socket. */
  function twoRooms() {
    const h = harness();
    const dev = h.room('dev');
    join(h);
    join(h, { room: 'dev' }, dev.client);
    return { h, dev };
  }

  test('each room matches the acks that name it', () => {
    const { h, dev } = twoRooms();
    h.client.say('in lobby');
    dev.client.say('in dev');
    h.socket.receive({ type: 'ack', room: 'dev', ref: 'm2', seq: 1 });
    h.socket.receive({ type: 'ack', room: 'lobby', ref: 'm1', seq: 1 });
    assert.deepEqual(dev.client.pending.map((p) => [p.ref, p.seq]), [['m2', 1]]);
    assert.deepEqual(h.client.pending.map((p) => [p.ref, p.seq]), [['m1', 1]]);
    h.socket.receive(message(1, ANN, 'in dev', 'dev'));
    assert.deepEqual(dev.client.pending, []);
    assert.equal(h.client.pending.length, 1);
  });

  test('an ack naming another room touches nothing here', () => {
    const { h, dev } = twoRooms();
    dev.client.say('in dev');
    h.socket.receive({ type: 'ack', room: 'lobby', ref: 'm1', seq: 1 });
    assert.deepEqual(dev.client.pending.map((p) => [p.ref, p.seq]), [['m1', null]]);
  });

  test('an error naming a room is told in that room only', () => {
    const { h, dev } = twoRooms();
    dev.client.say('fast');
    h.socket.receive({ type: 'error', room: 'dev', code: 'rate_limited', detail: 'slow down', ref: 'm1' });
    assert.equal(dev.eventsOf('error').length, 1);
    assert.equal(dev.client.pending[0].state, 'failed');
    assert.deepEqual(h.eventsOf('error'), []);
  });

  test('an error naming no room goes to the room whose request it answers', () => {
    const { h, dev } = twoRooms();
    dev.client.say('fast');
    h.socket.receive({ type: 'error', code: 'rate_limited', detail: 'slow down', ref: 'm1' });
    assert.equal(dev.client.pending[0].state, 'failed');
    assert.deepEqual(h.eventsOf('error'), []);
  });

  test('an error naming no room and answering nothing is told in every room; one answering a ping in none', () => {
    const { h, dev } = twoRooms();
    h.socket.receive({ type: 'error', code: 'unsupported', detail: 'binary', ref: null });
    h.socket.receive({ type: 'error', code: 'rate_limited', detail: 'slow down', ref: 'p1' });
    assert.deepEqual(h.eventsOf('error').map((e) => e.code), ['unsupported']);
    assert.deepEqual(dev.eventsOf('error').map((e) => e.code), ['unsupported']);
  });

  test('what each room was told while disconnected goes out after its own welcome', () => {
    const { h, dev } = twoRooms();
    h.socket.drop(1006);
    h.client.say('lobby, later');
    dev.client.say('dev, later');
    h.clock.advance(500);
    h.socket.greet();
    h.socket.receive(welcome({ room: 'dev', recovered: true }));
    assert.deepEqual(h.socket.said(), [{ type: 'message', room: 'dev', text: 'dev, later', ref: 'm2' }]);
    assert.equal(h.client.pending[0].state, 'queued');
    h.socket.receive(welcome({ recovered: true }));
    assert.deepEqual(h.socket.said().map((f) => f.room), ['dev', 'lobby']);
  });
});

describe('history paging', () => {
  test('loading older asks for the page before the oldest message held', () => {
    const h = harness();
    const socket = join(h, { history: messages(51, 52) });
    h.client.loadOlder();
    assert.deepEqual(socket.said(), [{ type: 'history', room: 'lobby', before: 51, limit: 50, ref: 'h1' }]);
    assert.equal(h.client.loadingOlder, true);
  });

  test('only one page is asked for at a time', () => {
    const h = harness();
    const socket = join(h, { history: messages(51) });
    h.client.loadOlder();
    h.client.loadOlder();
    assert.equal(socket.said().length, 1);
  });

  test('the page is placed before what was held', () => {
    const h = harness();
    const socket = join(h, { history: messages(51, 52) });
    h.client.loadOlder();
    socket.receive({ type: 'history', room: 'lobby', ref: 'h1', messages: messages(49, 50) });
    const [change] = h.eventsOf('history');
    assert.equal(change.paged, true);
    assert.deepEqual(change.inserted.map(({ message: m, before }) => [m.seq, before]), [[49, 51], [50, 51]]);
    assert.equal(h.client.loadingOlder, false);
    assert.equal(h.client.noMore, false);
  });

  test('a page reaching seq 1 is the beginning of the room', () => {
    const h = harness();
    const socket = join(h, { history: messages(3) });
    h.client.loadOlder();
    socket.receive({ type: 'history', room: 'lobby', ref: 'h1', messages: messages(1, 2) });
    assert.equal(h.client.noMore, true);
    h.client.loadOlder();
    assert.equal(socket.said().length, 1);
  });

  test('an empty page is the beginning of the room', () => {
    const h = harness();
    const socket = join(h, { history: messages(40) });
    h.client.loadOlder();
    socket.receive({ type: 'history', room: 'lobby', ref: 'h1', messages: [] });
    assert.equal(h.client.noMore, true);
  });

  test('nothing is asked for while disconnected', () => {
    const h = harness();
    join(h, { history: messages(40) });
    h.socket.drop(1006);
    h.client.loadOlder();
    assert.equal(h.client.loadingOlder, false);
    assert.deepEqual(h.sockets[0].said(), []);
  });

  test('a dropped connection forgets the page it asked for', () => {
    const h = harness();
    join(h, { history: messages(40) });
    h.client.loadOlder();
    h.socket.drop(1006);
    assert.equal(h.client.loadingOlder, false);
  });
});

describe('members and typing', () => {
  test('join and leave update the members by id, idempotently', () => {
    const h = harness();
    const socket = join(h);
    const cat = { id: 'c1', name: 'Cat' };
    socket.receive({ type: 'join', room: 'lobby', member: BOB });
    socket.receive({ type: 'join', room: 'lobby', member: cat });
    assert.deepEqual([...h.client.members.values()], [ANN, BOB, cat]);
    socket.receive({ type: 'leave', room: 'lobby', member: BOB });
    socket.receive({ type: 'leave', room: 'lobby', member: BOB });
    assert.deepEqual([...h.client.members.keys()], ['a1', 'c1']);
    assert.equal(h.eventsOf('members').length, 4);
  });

  test('a join or leave without a member id is ignored', () => {
    const h = harness();
    const socket = join(h);
    socket.receive({ type: 'join', room: 'lobby' });
    socket.receive({ type: 'leave', room: 'lobby', member: { name: 'x' } });
    assert.equal(h.client.members.size, 2);
    assert.deepEqual(h.eventsOf('members'), []);
  });

  test('someone typing shows for 4 s after their last typing frame', () => {
    const h = harness();
    const socket = join(h);
    socket.receive({ type: 'typing', room: 'lobby', from: BOB });
    assert.deepEqual(h.client.typists(), ['Bob']);
    h.clock.advance(TYPING_SHOW_MS - 1);
    assert.deepEqual(h.client.typists(), ['Bob']);
    h.clock.advance(1);
    assert.deepEqual(h.client.typists(), []);
    assert.equal(h.eventsOf('typing').length, 2, 'told when it began and when it ended');
  });

  test('a message from someone typing ends their typing', () => {
    const h = harness();
    const socket = join(h);
    socket.receive({ type: 'typing', room: 'lobby', from: BOB });
    socket.receive(message(1, BOB));
    assert.deepEqual(h.client.typists(), []);
  });

  test('leaving ends typing too', () => {
    const h = harness();
    const socket = join(h);
    socket.receive({ type: 'typing', room: 'lobby', from: BOB });
    socket.receive({ type: 'leave', room: 'lobby', member: BOB });
    assert.deepEqual(h.client.typists(), []);
  });

  test('own typing frames are not shown', () => {
    const h = harness();
    const socket = join(h);
    socket.receive({ type: 'typing', room: 'lobby', from: ANN });
    assert.deepEqual(h.client.typists(), []);
  });

  test('typing is told at once, then at most every 2 s', () => {
    const h = harness();
    const socket = join(h);
    const draft = () => 'hello';
    h.client.typed(draft);
    assert.deepEqual(socket.said(), [{ type: 'typing', room: 'lobby' }]);
    h.clock.advance(500);
    h.client.typed(draft);
    h.clock.advance(1499);
    assert.equal(socket.said().length, 1);
    h.clock.advance(1);
    assert.equal(socket.said().length, 2);
  });

  test('a held-back typing is not told when the person stopped typing meanwhile', () => {
    const h = harness();
    const socket = join(h);
    const draft = () => 'hello';
    h.client.typed(draft);
    h.client.typed(draft);
    h.clock.advance(10_000);
    assert.equal(socket.said().length, 1);
  });

  test('a held-back typing is not told once the draft is gone', () => {
    const h = harness();
    const socket = join(h);
    let text = 'hello';
    h.client.typed(() => text);
    h.clock.advance(1000);
    h.client.typed(() => text);
    text = '';
    h.clock.advance(1000);
    assert.equal(socket.said().length, 1);
  });

  test('an empty draft tells nobody', () => {
    const h = harness();
    const socket = join(h);
    h.client.typed(() => '   ');
    assert.deepEqual(socket.said(), []);
  });
});

describe('errors', () => {
  test('an error for a message marks it failed, retryable', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('quick');
    socket.receive({ type: 'error', code: 'rate_limited', detail: 'slow down', ref: 'm1' });
    const [error] = h.eventsOf('error');
    assert.equal(error.code, 'rate_limited');
    assert.equal(error.pending, h.client.pending[0]);
    assert.deepEqual(h.client.pending.map((p) => [p.state, p.reason, p.retry]), [['failed', 'Not sent', true]]);
  });

  test('a message too long or malformed is failed for good', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('long');
    h.client.say('bad');
    socket.receive({ type: 'error', code: 'too_large', detail: 'too long', ref: 'm1' });
    socket.receive({ type: 'error', code: 'bad_request', detail: 'no', ref: 'm2' });
    assert.deepEqual(h.client.pending.map((p) => [p.reason, p.retry]), [['Too long', false], ['Not sent', false]]);
  });

  test('an error answering the page request ends the loading', () => {
    const h = harness();
    const socket = join(h, { history: messages(70) });
    h.client.loadOlder();
    socket.receive({ type: 'error', code: 'unavailable', detail: 'backend', ref: 'h1' });
    assert.equal(h.eventsOf('error')[0].historyFailed, true);
    assert.equal(h.client.loadingOlder, false);
  });

  test('an error without a ref is told and touches no message', () => {
    const h = harness();
    const socket = join(h);
    h.client.say('hi');
    socket.receive({ type: 'error', code: 'unsupported', detail: 'binary', ref: null });
    const told = { code: 'unsupported', detail: 'binary', pending: null, historyFailed: false };
    assert.deepEqual(h.eventsOf('error'), [told]);
    assert.equal(h.client.pending[0].state, 'sent');
    assert.equal(h.client.live, true);
  });
});

describe('names', () => {
  test('a display name is trimmed, 1-32 characters, without control characters', () => {
    assert.deepEqual(validateName('  Ann  '), ['Ann', '']);
    assert.equal(validateName('')[0], null);
    assert.equal(validateName('x'.repeat(33))[0], null);
    assert.equal(validateName('a\u0007b')[0], null);
    assert.deepEqual(validateName('😀'.repeat(32)), ['😀'.repeat(32), '']);
  });

  test('a room name follows the server rule, a leading # dropped', () => {
    assert.deepEqual(validateRoom(' #lobby '), ['lobby', '']);
    assert.equal(validateRoom('bad room!')[0], null);
    assert.equal(validateRoom('.hidden')[0], null);
    assert.equal(validateRoom('a'.repeat(65))[0], null);
  });
});
