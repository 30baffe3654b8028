// The portal's behaviour. Pages are rendered by the server and work as plain
// HTML forms; this script adds htmx (partial updates), the CSRF header on
// htmx requests, confirmation dialogs, copy buttons, clear error messages and
// live updates from the event stream. Nothing here may rely on inline
// scripts: the Content-Security-Policy forbids them.

import htmx from 'htmx.org';
import { setupConfirm } from './confirm.js';
import { setupCopy } from './copy.js';
import { setupLive } from './live.js';
import { showError, clearError } from './flash.js';

// htmx's defaults would inject an inline <style> (blocked by our CSP) and
// allow `eval`-based attributes we never use.
htmx.config.includeIndicatorStyles = false;
htmx.config.allowEval = false;
htmx.config.allowScriptTags = false;
htmx.config.selfRequestsOnly = true;
htmx.config.historyCacheSize = 0;
window.htmx = htmx;

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute('content') : '';
}

// Every htmx request carries the session's CSRF token; the server checks it
// on everything that changes state.
document.addEventListener('htmx:configRequest', (event) => {
  const token = csrfToken();
  if (token) event.detail.headers['X-CSRF-Token'] = token;
});

document.addEventListener('htmx:beforeRequest', () => clearError());

// A failed htmx request would otherwise do nothing visible.
document.addEventListener('htmx:responseError', (event) => {
  const xhr = event.detail.xhr;
  showError(errorText(xhr));
});
document.addEventListener('htmx:sendError', () => {
  showError('The server could not be reached. Check your connection and try again.');
});

function errorText(xhr) {
  const type = xhr.getResponseHeader('Content-Type') || '';
  if (type.includes('application/json')) {
    try {
      const body = JSON.parse(xhr.responseText);
      if (body && body.error && body.error.message) return body.error.message;
    } catch {
      // fall through to the generic message
    }
  }
  if (type.startsWith('text/plain') && xhr.responseText) return xhr.responseText.slice(0, 300);
  return `The request failed (HTTP ${xhr.status}).`;
}

// A page that must not be shown again on reload (the deployment's one
// showing the guest's password) names the address to show instead: a
// reload then asks for that page, never re-sending the form.
const replaceWith = document.querySelector('[data-replace-url]');
if (replaceWith) history.replaceState(null, '', replaceWith.dataset.replaceUrl);

setupConfirm();
setupCopy();
setupLive({ csrfToken });
