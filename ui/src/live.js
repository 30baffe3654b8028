// Live updates. Pages mark the parts that depend on changing data with
// `data-live="topic topic…"` plus an htmx `hx-get` that re-renders that part
// on the `ov:live` event. This module keeps one WebSocket to the event stream
// and, for every event, fires `ov:live` on the elements whose topics match.
// The server stays the only place that renders state; events only say
// "this changed". Whenever the socket opens, the first time included, every
// live element refreshes once: events between the page's rendering and the
// subscription, or while disconnected, are not lost.

import htmx from 'htmx.org';

const MAX_BACKOFF_MS = 15000;

// Topics an event concerns: its family (`vm`, `job`, `host`) and, when the
// event names one, the specific object (`vm:<id>`, `job:<id>`, `host:<id>`).
export function topicsOf(message) {
  const topics = new Set();
  const kind = String(message.kind || message.type || message.event || '');
  const family = kind.split(/[._:]/)[0];
  if (family) topics.add(family);
  const add = (prefix, value) => {
    if (value === undefined || value === null || value === '') return;
    topics.add(prefix);
    topics.add(`${prefix}:${value}`);
  };
  const body = message.data && typeof message.data === 'object' ? { ...message, ...message.data } : message;
  add('job', body.job_id ?? (family === 'job' ? body.id : undefined));
  add('host', body.host_id ?? (family === 'host' ? body.id : undefined));
  add('vm', body.vm_id ?? body.uuid ?? (family === 'vm' ? body.id : undefined));
  if (body.vm && typeof body.vm === 'object') {
    add('vm', body.vm.id ?? body.vm.uuid);
    add('host', body.vm.host_id);
  }
  if (body.job && typeof body.job === 'object') add('job', body.job.id);
  if (body.host && typeof body.host === 'object') add('host', body.host.id);
  return topics;
}

function liveElements() {
  return Array.from(document.querySelectorAll('[data-live]'));
}

// Each element refreshes at most once per its `data-live-gap` (ms), and a
// burst of events always ends with one refresh after the last of them, so
// the final state (a job's "succeeded" right after its last step) is never
// dropped the way htmx's own `throttle` drops trailing events.
const gates = new WeakMap();

function refreshOne(el) {
  const gap = Number(el.dataset.liveGap || 0);
  const gate = gates.get(el) || { last: 0, timer: null };
  gates.set(el, gate);
  const wait = gate.last + gap - Date.now();
  if (wait <= 0 && !gate.timer) {
    gate.last = Date.now();
    htmx.trigger(el, 'ov:live');
  } else if (!gate.timer) {
    gate.timer = setTimeout(() => {
      gate.timer = null;
      gate.last = Date.now();
      htmx.trigger(el, 'ov:live');
    }, Math.max(wait, 0));
  }
}

function refresh(elements) {
  for (const el of elements) refreshOne(el);
}

function setStatus(text, state) {
  const badge = document.getElementById('live-status');
  if (!badge) return;
  badge.textContent = text;
  badge.dataset.state = state;
}

// Usage charts ask for the metrics samples, which a stream only sends when
// named; everything else is the default set.
const WITH_METRICS = '?types=job,vm,host,metrics';

export function setupLive() {
  const charts = document.querySelector('[data-charts]') !== null;
  if (liveElements().length === 0 && !charts) return;
  let backoff = 500;

  const connect = () => {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = charts ? WITH_METRICS : '';
    const socket = new WebSocket(`${scheme}//${location.host}/api/v1/events${query}`);
    socket.addEventListener('open', () => {
      backoff = 500;
      setStatus('Live', 'on');
      document.body.dataset.live = 'on';
      refresh(liveElements());
      document.dispatchEvent(new CustomEvent('ov:live-open'));
    });
    socket.addEventListener('message', (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      document.dispatchEvent(new CustomEvent('ov:event', { detail: message }));
      const topics = topicsOf(message);
      const hit = liveElements().filter((el) =>
        el.dataset.live.split(/\s+/).some((t) => topics.has(t)),
      );
      refresh(hit);
    });
    socket.addEventListener('close', async (event) => {
      // The server ends the stream when the session stops being valid
      // (4401) or the account's role changed (4403). Reloading lets the
      // server answer: sign-in (then back to this page), or the page as the
      // new role sees it.
      if (event.code === 4401 || event.code === 4403) {
        location.reload();
        return;
      }
      setStatus('Reconnecting…', 'off');
      document.body.dataset.live = 'off';
      // A stream that broke otherwise may still be an expired session.
      try {
        const me = await fetch('/api/v1/users/me', { credentials: 'same-origin' });
        if (me.status === 401) {
          location.reload();
          return;
        }
      } catch {
        // the server is unreachable; keep retrying
      }
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    });
  };
  connect();
}
