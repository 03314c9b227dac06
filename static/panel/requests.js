// The requests page: new rows every few seconds while "Live" is on.
"use strict";

(() => {
  const rows = document.getElementById("request-rows");
  if (!rows) return;
  const toggle = document.getElementById("live-requests");
  const EVERY_MS = 3000;

  async function refresh() {
    if (toggle.checked && document.visibilityState === "visible") {
      try {
        const response = await fetch(rows.dataset.rowsUrl, { credentials: "same-origin" });
        if (response.ok && !response.redirected) {
          // Our own server-rendered (escaped) rows.
          rows.innerHTML = await response.text();
        }
      } catch {
        // Offline for a moment: try again on the next tick.
      }
    }
    window.setTimeout(refresh, EVERY_MS);
  }
  window.setTimeout(refresh, EVERY_MS);
})();
