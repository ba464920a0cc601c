// What the views share: a status line with its alert box, and running one action with its
// button disabled and its error shown in words (never a stack trace).

const $ = (id) => document.getElementById(id);

/** `say(text, isError)` for the view whose elements are `${prefix}-status` and `${prefix}-error`. */
export function statusLine(prefix) {
  return (text, isError = false) => {
    $(`${prefix}-status`).textContent = isError ? "" : text;
    const box = $(`${prefix}-error`);
    box.textContent = isError ? text : "";
    box.hidden = !isError;
  };
}

/** Run `work` with `button` (if any) disabled, saying `what` meanwhile and the error after. */
export async function guarded(button, say, what, work) {
  if (button) button.disabled = true;
  say(what);
  try {
    await work();
  } catch (exc) {
    const message = exc.message || String(exc);
    say(exc.status !== undefined ? `The node refused: ${message}` : message, true);
  } finally {
    if (button) button.disabled = false;
  }
}
