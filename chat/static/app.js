/* The chat's web client: plain JavaScript modules, no build step, nothing fetched from elsewhere.
 *
 * protocol.js speaks the protocol (no DOM), view.js is the page, dom.js builds its elements; this
 * module wires them: one connection for the page, reaching the server where the app is mounted, and
 * the rooms and name that the address asks for.
 */

import { ChatSocket, validateName, validateRoom } from './protocol.js';
import { createView } from './view.js';

/** Where the app is mounted: this module lives at <mount>/static/app.js. */
const BASE = new URL('../', import.meta.url);

const view = createView(new ChatSocket({ base: BASE }));

const params = new URLSearchParams(location.search);
const wanted = [...(params.get('rooms') || '').split(','), params.get('room') || '']
  .map((name) => name.trim()).filter(Boolean);
const [room, roomError] = validateRoom(params.get('room') || wanted[0] || '');
const rooms = [...new Set(wanted.map((name) => validateRoom(name)[0]).filter(Boolean))];
const rawName = params.get('name');
const [name, nameError] = validateName(rawName);
if (name && room) {
  view.start(name, rooms.length ? rooms : [room], room);
} else {
  view.showSetup('join', room || params.get('room') || '', {
    name: rawName || '',
    nameError: rawName != null ? nameError : '',
    roomError: params.get('room') != null ? roomError : '',
  });
}
