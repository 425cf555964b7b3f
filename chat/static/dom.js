/* Building the page's elements. Text from the network only ever becomes text nodes here, never HTML. */

/** Build an element. Children that are strings become text nodes: nothing here parses HTML. */
export function h(tag, props, ...children) {
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

export function svgIcon(path) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  p.setAttribute('d', path);
  svg.append(p);
  return svg;
}

export function hue(text) {
  let hash = 0;
  for (const ch of text) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

export function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const first = (word) => (word ? [...word][0] : '');
  return (first(words[0]) + (words.length > 1 ? first(words[words.length - 1]) : '')).toUpperCase() || '?';
}

export function avatar(name) {
  const el = h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name));
  el.style.setProperty('--hue', String(hue(name)));
  return el;
}

export const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
export const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });

export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function dayLabel(ts) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(ts) === dayKey(today.getTime())) return 'Today';
  if (dayKey(ts) === dayKey(yesterday.getTime())) return 'Yesterday';
  return dayFormat.format(new Date(ts));
}

/** Message text as nodes: plain text, with http(s) links made clickable (as elements, never HTML). */
export function richText(text) {
  const out = document.createDocumentFragment();
  const pattern = /\bhttps?:\/\/[^\s<>"']+/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    const url = match[0].replace(/[.,;:!?)\]}]+$/, '');
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
