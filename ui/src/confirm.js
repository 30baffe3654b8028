// Destructive actions ask first. A form with `data-confirm="…"` opens an
// accessible <dialog>; only "Confirm" submits it. Works for plain forms and
// for htmx forms alike, because the check runs in the capture phase before
// htmx (or the browser) acts on the submit.

let dialog;

function ensureDialog() {
  if (dialog) return dialog;
  dialog = document.createElement('dialog');
  dialog.id = 'confirm-dialog';
  dialog.setAttribute('aria-labelledby', 'confirm-title');
  dialog.setAttribute('aria-describedby', 'confirm-message');
  dialog.innerHTML = `
    <form method="dialog">
      <h2 id="confirm-title">Are you sure?</h2>
      <p id="confirm-message"></p>
      <div class="actions">
        <button type="submit" value="cancel" class="secondary" id="confirm-cancel">Cancel</button>
        <button type="submit" value="confirm" class="danger" id="confirm-ok">Confirm</button>
      </div>
    </form>`;
  document.body.appendChild(dialog);
  return dialog;
}

function ask(message) {
  const d = ensureDialog();
  d.querySelector('#confirm-message').textContent = message;
  d.returnValue = '';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'confirm'), { once: true });
    d.showModal();
    d.querySelector('#confirm-cancel').focus();
  });
}

export function setupConfirm() {
  document.addEventListener(
    'submit',
    (event) => {
      const form = event.target;
      if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
      if (form.dataset.confirmed === 'yes') {
        delete form.dataset.confirmed;
        return;
      }
      event.preventDefault();
      event.stopImmediatePropagation();
      const submitter = event.submitter;
      ask(form.dataset.confirm).then((ok) => {
        if (!ok) return;
        form.dataset.confirmed = 'yes';
        form.requestSubmit(submitter && submitter.form === form ? submitter : undefined);
      });
    },
    true,
  );
}
