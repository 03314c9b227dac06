// The API keys page: copy a new key to the clipboard.
"use strict";

(() => {
  const button = document.getElementById("copy-key");
  if (!button) return;
  const key = document.querySelector(button.dataset.copy);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(key.textContent);
      button.textContent = "Copied";
    } catch {
      // No clipboard (a plain-HTTP page on another host): select it instead.
      const range = document.createRange();
      range.selectNodeContents(key);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
  });
})();
