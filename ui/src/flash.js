// One place on every page (`#flash`) for errors raised by scripts, announced
// to screen readers through role="alert".

export function showError(message) {
  const box = document.getElementById('flash');
  if (!box) return;
  box.textContent = message;
  box.hidden = false;
}

export function clearError() {
  const box = document.getElementById('flash');
  if (box) {
    box.hidden = true;
    box.textContent = '';
  }
}
