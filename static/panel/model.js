// The model page: fields for the chosen model source, and the template preview.
"use strict";

(() => {
  const form = document.getElementById("model-form");
  if (!form) return;

  function chosen(name) {
    const input = form.querySelector(`input[name="${name}"]:checked`);
    return input ? input.value : "";
  }

  function showChosen() {
    for (const block of form.querySelectorAll("[data-source-group]")) {
      block.hidden = block.dataset.source !== chosen(`${block.dataset.sourceGroup}_source`);
    }
    const template = chosen("template_choice");
    for (const block of form.querySelectorAll("[data-template]")) {
      block.hidden = block.dataset.template !== template;
    }
  }

  const templateField = form.querySelector("#id_chat_template_override");
  const systemPrompt = form.querySelector("#id_default_system_prompt");
  const output = document.getElementById("preview-output");
  const error = document.getElementById("preview-error");
  const ownTemplate = document.getElementById("own-template");
  let pending = 0;

  function templateSource() {
    if (chosen("template_choice") === "override") return templateField.value;
    return ownTemplate ? ownTemplate.textContent : null;
  }

  async function preview() {
    const source = templateSource();
    const ticket = ++pending;
    if (source === null) {
      error.hidden = true;
      output.textContent = "The model's own template is not known: no agent has the model loaded.";
      return;
    }
    const body = new FormData();
    body.append("template", source);
    body.append("default_system_prompt", systemPrompt.value);
    let result;
    try {
      const response = await fetch(form.dataset.previewUrl, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": window.panel.csrfToken() },
        credentials: "same-origin",
      });
      result = await response.json();
    } catch (failure) {
      result = { ok: false, error: `The preview is not available: ${failure}` };
    }
    if (ticket !== pending) return; // a newer preview is on its way
    const field = templateField.closest(".field");
    error.hidden = result.ok;
    field.classList.toggle("invalid", !result.ok && chosen("template_choice") === "override");
    if (result.ok) {
      output.textContent = result.rendered;
    } else {
      error.textContent = result.error;
      output.textContent = "";
    }
  }

  let timer = 0;
  function previewSoon() {
    window.clearTimeout(timer);
    timer = window.setTimeout(preview, 400);
  }

  form.addEventListener("change", (event) => {
    showChosen();
    if (event.target.name === "template_choice") preview();
  });
  templateField.addEventListener("input", previewSoon);
  systemPrompt.addEventListener("input", previewSoon);
  document.getElementById("preview-button").addEventListener("click", preview);
  showChosen();
  preview();
})();
