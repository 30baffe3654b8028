// Copy buttons: `<button data-copy="#id">` copies the text of that element.
// The Clipboard API needs a secure context; over plain HTTP on a LAN address
// we fall back to selecting the text so the operator can press Ctrl+C.

function announce(button, text) {
  const status = button.parentElement && button.parentElement.querySelector('.copy-status');
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.textContent = text;
  if (status) status.textContent = text;
  setTimeout(() => {
    button.textContent = label;
    if (status) status.textContent = '';
  }, 2000);
}

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

export function setupCopy() {
  document.addEventListener('click', async (event) => {
    const button = event.target instanceof Element ? event.target.closest('[data-copy]') : null;
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    const text = (source.value !== undefined ? source.value : source.textContent).trim();
    try {
      if (!navigator.clipboard) throw new Error('no clipboard');
      await navigator.clipboard.writeText(text);
      announce(button, 'Copied');
    } catch {
      selectText(source);
      announce(button, 'Selected — press Ctrl+C');
    }
  });
}
