// The prompt playground: a chat over the inference socket, token by token.
"use strict";

(() => {
  const root = document.getElementById("playground");
  if (!root) return;
  const { element, number } = window.panel;
  const list = document.getElementById("conversation");
  const empty = document.getElementById("conversation-empty");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const inputError = document.getElementById("chat-input-error");
  const maxTokens = document.getElementById("max-tokens");
  const maxTokensError = document.getElementById("max-tokens-error");
  const systemPrompt = document.getElementById("system-prompt");
  const thinking = document.getElementById("enable-thinking");
  const toolsInput = document.getElementById("tools-json");
  const toolsError = document.getElementById("tools-json-error");
  const sendButton = document.getElementById("send-button");
  const stopButton = document.getElementById("stop-button");
  const clearButton = document.getElementById("clear-button");
  const status = document.getElementById("run-status");
  const imageInput = document.getElementById("image-input");
  const attachmentList = document.getElementById("attachments");
  const imageError = document.getElementById("image-error");
  // The largest image the page sends (the server's limits, see the view).
  const maxImageBytes = Number(root.dataset.maxImageBytes) || 0;
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];
  const facts = {
    agent: document.getElementById("fact-agent"),
    tokens: document.getElementById("fact-tokens"),
    ttft: document.getElementById("fact-ttft"),
    speed: document.getElementById("fact-speed"),
    prompt: document.getElementById("fact-prompt"),
  };

  let history = [];
  let socket = null;
  let opening = null;
  let run = null; // the request in flight: {id, bubble, text, started, ...}
  let counter = 0;
  // Images for the next message: [{url (a data: URL), name}].
  let attachments = [];

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}${root.dataset.socketPath}`;
  }

  function openSocket() {
    if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
    if (opening) return opening;
    opening = new Promise((resolve, reject) => {
      const next = new WebSocket(socketUrl());
      next.onopen = () => {
        socket = next;
        opening = null;
        resolve(next);
      };
      next.onmessage = (event) => receive(JSON.parse(event.data));
      next.onclose = () => {
        if (socket === next) socket = null;
        if (opening) {
          opening = null;
          reject(new Error("the inference socket refused the connection"));
        }
        if (run) finish("The connection closed before the answer ended.", true);
      };
    });
    return opening;
  }

  function setStatus(text) {
    status.textContent = text;
  }

  function bubble(role, text, images = []) {
    empty.hidden = true;
    const item = element("li", `bubble ${role}`);
    item.append(element("span", "role", role === "user" ? "You" : role === "assistant" ? "Model" : role));
    if (images.length) {
      const row = element("div", "images");
      images.forEach((image, index) => {
        const img = element("img", "attached");
        img.src = image.url;
        img.alt = `Attached image ${index + 1}${image.name ? `: ${image.name}` : ""}`;
        row.append(img);
      });
      item.append(row);
    }
    const body = element("div", "text", text);
    item.append(body);
    list.append(item);
    list.scrollTop = list.scrollHeight;
    return item;
  }

  function showError(box, message) {
    box.textContent = message;
    box.hidden = !message;
    box.closest(".field, form").classList.toggle("invalid", !!message);
  }

  function validate() {
    let ok = true;
    if (!input.value.trim() && !attachments.length) {
      showError(inputError, "Write a message first.");
      ok = false;
    } else {
      showError(inputError, "");
    }
    if (toolsInput.value.trim()) {
      try {
        const tools = JSON.parse(toolsInput.value);
        if (!Array.isArray(tools)) throw new Error("not a list");
        showError(toolsError, "");
      } catch {
        showError(toolsError, "Enter a JSON list of function tools, or nothing.");
        ok = false;
      }
    } else {
      showError(toolsError, "");
    }
    const tokens = Number(maxTokens.value);
    if (!Number.isInteger(tokens) || tokens < 1 || tokens > 32768) {
      showError(maxTokensError, "Enter a whole number from 1 to 32768.");
      ok = false;
    } else {
      showError(maxTokensError, "");
    }
    return ok;
  }

  function setRunning(running) {
    sendButton.disabled = running;
    stopButton.disabled = !running;
    clearButton.disabled = running;
  }

  function resetFacts() {
    for (const fact of Object.values(facts)) fact.textContent = "–";
  }

  function updateFacts() {
    if (!run) return;
    facts.tokens.textContent = number(run.tokens);
    if (run.firstAt) {
      facts.ttft.textContent = `${number(run.firstAt - run.started)} ms`;
      const seconds = (run.lastAt - run.firstAt) / 1000;
      if (seconds > 0 && run.tokens > 1) {
        facts.speed.textContent = `${number((run.tokens - 1) / seconds, 1)} tokens/s`;
      }
    }
  }

  async function send() {
    if (run || !validate()) return;
    const text = input.value.trim();
    const images = attachments;
    input.value = "";
    clearAttachments();
    // With images, Paddler's (and OpenAI's) content parts: the text, then
    // each image as a data: URL.
    const content = images.length
      ? [
          ...(text ? [{ type: "text", text }] : []),
          ...images.map((image) => ({ type: "image_url", image_url: { url: image.url } })),
        ]
      : text;
    history.push({ role: "user", content });
    const asked = bubble("user", text, images);
    const conversation = systemPrompt.value.trim()
      ? [{ role: "system", content: systemPrompt.value.trim() }, ...history]
      : [...history];
    counter += 1;
    run = {
      id: `panel-${Date.now().toString(36)}-${counter}`,
      // A message with images that fails unanswered (no agent serves images,
      // an image that does not decode) leaves the conversation, or every
      // later message would carry it and fail the same way.
      asked: images.length ? { bubble: asked, message: history[history.length - 1] } : null,
      bubble: bubble("assistant", ""),
      text: "",
      tokens: 0,
      started: performance.now(),
      firstAt: 0,
      lastAt: 0,
    };
    run.bubble.classList.add("streaming");
    resetFacts();
    setRunning(true);
    setStatus("Waiting for a free slot…");
    try {
      const open = await openSocket();
      open.send(
        JSON.stringify({
          Request: {
            id: run.id,
            // The pool picked in the top bar (our extension of Paddler's message).
            ...(root.dataset.pool && root.dataset.pool !== "default"
              ? { pool: root.dataset.pool }
              : {}),
            request: {
              ContinueFromConversationHistory: {
                add_generation_prompt: true,
                conversation_history: conversation,
                enable_thinking: thinking.checked,
                max_tokens: Number(maxTokens.value),
                tools: toolsInput.value.trim() ? JSON.parse(toolsInput.value) : [],
              },
            },
          },
        }),
      );
    } catch (failure) {
      finish(`Could not reach the inference socket: ${failure.message}`, true);
    }
  }

  function receive(envelope) {
    if (envelope.Error) {
      const { request_id: id, error } = envelope.Error;
      if (run && id === run.id) finish(`Error ${error.code}: ${error.description}`, true);
      return;
    }
    const response = envelope.Response;
    if (!response || !run || response.request_id !== run.id) return;
    facts.agent.textContent = response.generated_by || "–";
    const generated = (response.response || {}).GeneratedToken;
    if (!generated) return;
    // Reasoning and tool calls are shown apart from the answer.
    if (typeof generated.ReasoningToken === "string") {
      countToken(response);
      section("reasoning", "Reasoning").textContent += generated.ReasoningToken;
      return;
    }
    if (typeof generated.ToolCallToken === "string") {
      countToken(response);
      section("tool-call-text", "Tool call (as written)").textContent +=
        generated.ToolCallToken;
      return;
    }
    if (Array.isArray(generated.ToolCallParsed)) {
      const calls = section("tool-calls", "Tool calls");
      for (const call of generated.ToolCallParsed) {
        const args = call.arguments || {};
        const text = "ValidJson" in args ? JSON.stringify(args.ValidJson) : String(args.InvalidJson);
        calls.append(element("code", "tool-call", `${call.name}(${text})`));
      }
      return;
    }
    if ("ToolCallParseFailed" in generated || "ToolCallValidationFailed" in generated) {
      const [variant, detail] = Object.entries(generated)[0];
      run.bubble.append(element("span", "note error", `${variant}: ${[].concat(detail).join("; ")}`));
      return;
    }
    if (typeof generated.ContentToken === "string") {
      const now = performance.now();
      if (!run.firstAt) {
        run.firstAt = now;
        setStatus(`Generating on ${response.generated_by}…`);
      }
      run.lastAt = now;
      run.tokens += 1;
      run.text += generated.ContentToken;
      run.bubble.querySelector(".text").textContent = run.text;
      list.scrollTop = list.scrollHeight;
      updateFacts();
    } else if (generated.Done) {
      const usage = generated.Done.usage || {};
      const images = usage.input_image_tokens
        ? ` + ${number(usage.input_image_tokens)} image`
        : "";
      facts.prompt.textContent =
        `${number(usage.prompt_tokens)}${images} (${number(usage.cached_prompt_tokens)} cached)`;
      finish("", false);
    } else {
      const [variant, detail] = Object.entries(generated)[0] || ["Error", ""];
      finish(`${variant}: ${detail}`, true);
    }
  }

  function countToken(response) {
    const now = performance.now();
    if (!run.firstAt) {
      run.firstAt = now;
      setStatus(`Generating on ${response.generated_by}…`);
    }
    run.lastAt = now;
    run.tokens += 1;
    updateFacts();
  }

  // The bubble's box for one kind of output, made on first use, before the
  // answer's text.
  function section(kind, title) {
    let box = run.bubble.querySelector(`.${kind} .body`);
    if (!box) {
      const wrapper = element("details", kind);
      wrapper.open = kind !== "reasoning";
      wrapper.append(element("summary", "", title));
      box = element(kind === "tool-calls" ? "div" : "pre", "body", "");
      wrapper.append(box);
      run.bubble.insertBefore(wrapper, run.bubble.querySelector(".text"));
    }
    list.scrollTop = list.scrollHeight;
    return box;
  }

  function finish(note, failed) {
    if (!run) return;
    const current = run;
    run = null;
    current.bubble.classList.remove("streaming");
    if (current.text) history.push({ role: "assistant", content: current.text });
    if (failed && !current.text && current.asked) {
      history = history.filter((message) => message !== current.asked.message);
      current.asked.bubble.classList.add("dropped");
      current.asked.bubble.append(
        element("span", "note", "Not kept in the conversation: it was not answered."),
      );
    }
    if (note) {
      current.bubble.append(element("span", failed ? "note error" : "note", note));
    }
    if (!current.text && !note) {
      current.bubble.querySelector(".text").textContent = "(no text)";
    }
    setRunning(false);
    setStatus(failed ? "" : `Done: ${number(current.tokens)} tokens.`);
    input.focus();
  }

  function showAttachments() {
    attachmentList.replaceChildren(
      ...attachments.map((image, index) => {
        const item = element("li", "attachment");
        const img = element("img");
        img.src = image.url;
        img.alt = image.name || `Image ${index + 1}`;
        const remove = element("button", "link", "Remove");
        remove.type = "button";
        remove.setAttribute("aria-label", `Remove ${img.alt}`);
        remove.addEventListener("click", () => {
          attachments.splice(index, 1);
          showAttachments();
        });
        item.append(img, remove);
        return item;
      }),
    );
    attachmentList.hidden = attachments.length === 0;
  }

  function clearAttachments() {
    attachments = [];
    showAttachments();
    showError(imageError, "");
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function attach(files) {
    for (const file of files) {
      if (!IMAGE_TYPES.includes(file.type)) {
        showError(imageError, `${file.name || "That file"} is not a PNG, JPEG, WebP, GIF or BMP image.`);
        continue;
      }
      if (maxImageBytes && file.size > maxImageBytes) {
        showError(
          imageError,
          `${file.name || "The image"} is ${number(file.size)} bytes; the largest image this server takes in a message is ${number(maxImageBytes)} bytes.`,
        );
        continue;
      }
      try {
        attachments.push({ url: await readAsDataUrl(file), name: file.name || "" });
        showError(imageError, "");
      } catch (failure) {
        showError(imageError, `Could not read ${file.name || "the image"}: ${failure}`);
      }
    }
    showAttachments();
  }

  function stop() {
    if (!run) return;
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ Notification: { StopRespondingTo: run.id } }));
    }
    const tokens = run.tokens;
    finish(`Stopped after ${number(tokens)} tokens.`, false);
    setStatus("Stopped; the slot is free again.");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", stop);
  imageInput.addEventListener("change", async () => {
    await attach([...imageInput.files]);
    imageInput.value = ""; // the same file can be picked again
  });
  // An image pasted into the message is attached, not written as text.
  input.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.items || [])]
      .filter((item) => item.kind === "file" && item.type.startsWith("image/"))
      .map((item) => item.getAsFile())
      .filter(Boolean);
    if (files.length) {
      event.preventDefault();
      attach(files);
    }
  });
  clearButton.addEventListener("click", () => {
    history = [];
    clearAttachments();
    list.replaceChildren(empty);
    empty.hidden = false;
    resetFacts();
    setStatus("");
    input.focus();
  });
})();
