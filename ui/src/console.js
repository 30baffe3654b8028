// The console page: a VM's serial console in xterm.js, or its display in
// noVNC. Both use exactly what the API offers: a single-use ticket from
// POST /api/v1/hosts/{id}/vms/{vm}/console, then a WebSocket to the URL it
// names. Serial: several people may watch; one types at a time ("Take
// control"). Reconnecting asks for a new ticket.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import RFB from '@novnc/novnc';

const root = document.getElementById('console');
if (root) {
  adoptInlineStyles();
  start(root);
}

// xterm.js writes its layout and colours into <style> elements, which the
// portal's Content-Security-Policy (no inline style) refuses. On this page
// a <style> asked for by script is an inert <template> whose text goes into
// a constructed stylesheet instead: the CSSOM, which the policy allows.
function adoptInlineStyles() {
  const create = document.createElement.bind(document);
  document.createElement = (tag, options) => {
    if (String(tag).toLowerCase() !== 'style') return create(tag, options);
    const holder = create('template');
    const sheet = new CSSStyleSheet();
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    let text = '';
    Object.defineProperty(holder, 'textContent', {
      get: () => text,
      set: (value) => {
        text = String(value ?? '');
        sheet.replaceSync(text);
      },
    });
    const remove = holder.remove.bind(holder);
    holder.remove = () => {
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
    return holder;
  };
}

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute('content') : '';
}

// A ticket for this page's VM and kind, or an Error saying why not.
async function ticket(host, vm, kind) {
  const response = await fetch(`/api/v1/hosts/${encodeURIComponent(host)}/vms/${encodeURIComponent(vm)}/console`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken() },
    body: JSON.stringify({ kind }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body?.error?.message || `the service answered ${response.status}`);
  }
  const url = new URL(body.url, window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

function start(el) {
  const { host, vm, kind } = el.dataset;
  const status = el.querySelector('#console-status');
  const reconnect = el.querySelector('#console-reconnect');
  const screen = el.querySelector('#console-screen');
  const say = (text, state) => {
    status.textContent = text;
    status.dataset.state = state;
  };
  const session = kind === 'vnc'
    ? vncSession(el, screen, say)
    : serialSession(el, screen, say);
  const connect = async () => {
    reconnect.hidden = true;
    say('Connecting…', 'connecting');
    try {
      session.open(await ticket(host, vm, kind), () => { reconnect.hidden = false; });
    } catch (error) {
      say(`Cannot open the console: ${error.message}`, 'error');
      reconnect.hidden = false;
    }
  };
  reconnect.addEventListener('click', connect);
  connect();
}

function serialSession(el, screen, say) {
  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  const take = el.querySelector('#console-take');
  const stty = el.querySelector('#console-stty');
  const control = el.querySelector('#console-control');
  const encoder = new TextEncoder();
  let ws = null;
  let inControl = false;

  const send = (data) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(data);
  };
  const sendSize = () => send(JSON.stringify({ resize: [term.cols, term.rows] }));
  // A watcher's keys (and its terminal's automatic answers to what the
  // guest prints) stay here: only the viewer in control types.
  let holder = null;
  term.onData((data) => {
    if (inControl) send(encoder.encode(data));
    else if (holder) control.textContent = `${holder} is typing; you are watching (take control to type)`;
  });
  term.onResize(sendSize);
  const refit = () => {
    try { fit.fit(); } catch { /* not laid out yet */ }
  };
  new ResizeObserver(refit).observe(screen);
  window.addEventListener('resize', refit);
  take.addEventListener('click', () => send(JSON.stringify({ take_control: true })));
  // A serial line carries no window size: this types the size into the
  // guest's shell, at the user's request.
  stty.addEventListener('click', () => {
    send(encoder.encode(`stty rows ${term.rows} cols ${term.cols}\r`));
    term.focus();
  });

  const onText = (message, ended) => {
    if (message.type === 'connected') {
      say('Connected', 'connected');
      sendSize();
      term.focus();
    } else if (message.type === 'control') {
      inControl = message.you;
      holder = message.holder;
      const others = message.viewers - 1;
      const watching = others > 0 ? ` · ${others} other viewer${others === 1 ? '' : 's'}` : '';
      control.textContent = (message.you
        ? 'You are typing'
        : message.holder ? `${message.holder} is typing; you are watching` : 'Nobody is typing') + watching;
      take.hidden = message.you;
      stty.disabled = !message.you;
    } else if (message.type === 'error' && message.reason === 'not_in_control') {
      control.textContent = message.message;
    } else if (message.type === 'error') {
      say(message.message, 'error');
    } else if (message.type === 'closed') {
      ended(message.message);
    }
  };

  return {
    open(url, onClosed) {
      ws?.close();
      let why = null;
      const ended = (message) => { why = message; };
      ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      ws.addEventListener('message', (event) => {
        if (typeof event.data === 'string') {
          try { onText(JSON.parse(event.data), ended); } catch { /* not ours */ }
        } else {
          term.write(new Uint8Array(event.data));
        }
      });
      ws.addEventListener('close', (event) => {
        say(`Disconnected: ${why || event.reason || 'the connection closed'}`, 'closed');
        control.textContent = '';
        take.hidden = true;
        onClosed();
      });
    },
  };
}

function vncSession(el, screen, say) {
  const cad = el.querySelector('#console-cad');
  const scale = el.querySelector('#console-scale');
  let rfb = null;
  cad.addEventListener('click', () => rfb?.sendCtrlAltDel());
  scale.addEventListener('change', () => { if (rfb) rfb.scaleViewport = scale.checked; });
  return {
    open(url, onClosed) {
      rfb?.disconnect();
      screen.replaceChildren();
      rfb = new RFB(screen, url, { wsProtocols: ['binary'], shared: true });
      rfb.scaleViewport = scale.checked;
      rfb.addEventListener('connect', () => {
        say('Connected', 'connected');
        cad.disabled = false;
      });
      rfb.addEventListener('disconnect', (event) => {
        say(event.detail.clean ? 'Disconnected' : 'Disconnected: the connection was lost', 'closed');
        cad.disabled = true;
        onClosed();
      });
      rfb.addEventListener('securityfailure', (event) => {
        say(`Refused by the VM's display: ${event.detail.reason || 'security failure'}`, 'error');
      });
    },
  };
}
