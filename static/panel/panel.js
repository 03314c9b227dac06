// Shared by every page of the panel.
"use strict";

// Forms that change something irreversible ask first.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm) {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }
});

window.panel = {
  // The CSRF token of the page's first form (every panel page has one).
  csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  },
  // "1234" -> "1,234"; null -> "–".
  number(value, digits = 0) {
    if (value === null || value === undefined || Number.isNaN(value)) {
      return "–";
    }
    return Number(value).toLocaleString("en-US", {
      maximumFractionDigits: digits,
      minimumFractionDigits: 0,
    });
  },
  element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  },
};

// The pool switcher in the top bar: picking a pool shows the page for it.
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll(".pool-switcher select")) {
    select.addEventListener("change", () => select.form.submit());
  }
});
