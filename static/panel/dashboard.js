// The dashboard: agents, the buffer and charts, live over Server-Sent Events.
"use strict";

(() => {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const { number, element } = window.panel;
  const live = document.getElementById("live");
  const agentsBox = document.getElementById("agents");
  const noAgents = document.getElementById("no-agents");
  const cards = new Map();

  const STATUS_BADGES = {
    Fresh: ["warn", "Reloading"],
    Applied: ["ok", "Applied"],
    AttemptedAndRetrying: ["warn", "Retrying"],
    AttemptedAndNotAppliable: ["error", "Not appliable"],
    Stuck: ["error", "Stuck"],
  };

  function setLive(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }

  function setMeter(span, fraction) {
    const clamped = Math.max(0, Math.min(1, fraction || 0));
    span.style.width = `${(clamped * 100).toFixed(1)}%`;
  }

  function megabytes(bytes) {
    return `${number(bytes / 1e6, 1)} MB`;
  }

  function newCard(agent) {
    const card = element("article", "card agent");
    card.dataset.agentId = agent.id;
    const head = element("div", "agent-head");
    const title = element("div");
    const name = element("div", "agent-name");
    const model = element("div", "agent-model");
    title.append(name, model);
    const badge = element("span", "badge");
    head.append(title, badge);

    const slots = element("div");
    const slotsRow = element("div", "agent-row");
    const slotsValue = element("span", "slots-value");
    slotsRow.append(element("span", null, "Slots processing"), slotsValue);
    const slotsMeter = element("div", "meter");
    const slotsBar = element("span");
    slotsMeter.append(slotsBar);
    slots.append(slotsRow, slotsMeter);

    const download = element("div", "download");
    const downloadRow = element("div", "agent-row");
    const downloadValue = element("span", "download-value");
    downloadRow.append(element("span", null, "Downloading"), downloadValue);
    const downloadMeter = element("div", "meter");
    const downloadBar = element("span");
    downloadMeter.append(downloadBar);
    const downloadName = element("div", "download-file");
    download.append(downloadRow, downloadMeter, downloadName);

    // The host-memory KV tier: conversations whose slot was taken, kept in
    // the agent's RAM for their next turn.
    const hostTier = element("div", "host-tier");
    const hostTierRow = element("div", "agent-row");
    const hostTierValue = element("span", "host-tier-value");
    hostTierRow.append(element("span", null, "Host KV tier"), hostTierValue);
    const hostTierMeter = element("div", "meter");
    const hostTierBar = element("span");
    hostTierMeter.append(hostTierBar);
    const hostTierHits = element("div", "host-tier-hits");
    hostTier.append(hostTierRow, hostTierMeter, hostTierHits);

    // The disk KV tier below it (agents started with --cache-dir): the same
    // states in files, which outlive a restart of the agent.
    const diskTier = element("div", "disk-tier");
    const diskTierRow = element("div", "agent-row");
    const diskTierValue = element("span", "disk-tier-value");
    diskTierRow.append(element("span", null, "Disk KV tier"), diskTierValue);
    const diskTierMeter = element("div", "meter");
    const diskTierBar = element("span");
    diskTierMeter.append(diskTierBar);
    const diskTierHits = element("div", "disk-tier-hits");
    const diskTierProblems = element("div", "disk-tier-problems");
    diskTier.append(diskTierRow, diskTierMeter, diskTierHits, diskTierProblems);

    const templateRow = element("div", "agent-row");
    const templateValue = element("span", "template-value");
    templateRow.append(element("span", null, "Chat template"), templateValue);

    // Whether a multimodal projection is loaded: requests with images go
    // only to agents that serve them.
    const imagesRow = element("div", "agent-row");
    const imagesValue = element("span", "images-value");
    imagesRow.append(element("span", null, "Images"), imagesValue);

    const status = element("p", "agent-status");
    const issues = element("ul", "issues");
    card.append(
      head, slots, download, hostTier, diskTier, templateRow, imagesRow, status, issues,
    );
    const parts = {
      card, name, model, badge, slotsValue, slotsBar, download, downloadName,
      downloadValue, downloadMeter, downloadBar, templateValue, imagesValue, status, issues,
      hostTier, hostTierValue, hostTierMeter, hostTierBar, hostTierHits,
      diskTier, diskTierValue, diskTierMeter, diskTierBar, diskTierHits, diskTierProblems,
    };
    cards.set(agent.id, parts);
    return parts;
  }

  function renderAgent(agent) {
    const parts = cards.get(agent.id) || newCard(agent);
    parts.name.textContent = agent.name || agent.id;
    parts.model.textContent = agent.model_name || "no model loaded";
    parts.model.title = agent.model_path || "";
    const [tone, label] = STATUS_BADGES[agent.state_application_status] || [
      "muted",
      String(agent.state_application_status),
    ];
    parts.badge.className = `badge ${tone}`;
    parts.badge.textContent = label;
    parts.card.dataset.status = agent.state_application_status;

    const total = agent.slots_total || 0;
    let slotsText = `${agent.slots_processing || 0} / ${total}`;
    if (agent.desired_slots_total && agent.desired_slots_total !== total) {
      slotsText += ` (${agent.desired_slots_total} when ready)`;
    }
    parts.slotsValue.textContent = slotsText;
    setMeter(parts.slotsBar, total ? agent.slots_processing / total : 0);

    const downloading =
      agent.download_indeterminate ||
      (agent.download_total > 0 && agent.download_current < agent.download_total);
    parts.download.hidden = !downloading;
    if (downloading) {
      parts.downloadName.textContent = agent.download_filename || "";
      parts.downloadName.title = agent.download_filename || "";
      parts.downloadMeter.classList.toggle("indeterminate", !!agent.download_indeterminate);
      if (agent.download_total > 0) {
        const fraction = agent.download_current / agent.download_total;
        parts.downloadValue.textContent =
          `${Math.floor(fraction * 100)}% · ${number(agent.download_current / 1e6, 1)} of ${megabytes(agent.download_total)}`;
        setMeter(parts.downloadBar, fraction);
      } else {
        parts.downloadValue.textContent = megabytes(agent.download_current || 0);
      }
    }
    renderHostTier(parts, agent.host_cache);
    renderDiskTier(parts, agent.disk_cache);
    parts.templateValue.textContent = agent.uses_chat_template_override
      ? "override"
      : "the model's own";
    parts.imagesValue.textContent = agent.serves_images
      ? "served (projection loaded)"
      : "not served";
    parts.card.dataset.servesImages = agent.serves_images ? "yes" : "no";
    parts.status.textContent = agent.status_words;
    parts.issues.replaceChildren(
      ...(agent.issues_explained || []).map((text) => element("li", null, text)),
    );
    parts.issues.hidden = parts.issues.children.length === 0;
    return parts.card;
  }

  function renderHostTier(parts, tier) {
    parts.hostTier.hidden = !tier;
    if (!tier) {
      return;
    }
    if (!tier.budget_bytes) {
      parts.hostTierValue.textContent = "off";
      parts.hostTierMeter.hidden = true;
      parts.hostTierHits.textContent = "";
      return;
    }
    parts.hostTierMeter.hidden = false;
    const entries = `${tier.entries} ${tier.entries === 1 ? "entry" : "entries"}`;
    parts.hostTierValue.textContent =
      `${entries} · ${megabytes(tier.bytes)} of ${megabytes(tier.budget_bytes)}`;
    setMeter(parts.hostTierBar, tier.bytes / tier.budget_bytes);
    parts.hostTierHits.textContent = tier.lookups
      ? `hit rate ${Math.round(tier.hit_rate * 100)}% (${tier.hits} of ${tier.lookups} lookups)`
      : "no lookups yet";
  }

  // "1 corrupt file", "2 corrupt files".
  function count(value, one, many) {
    return `${number(value)} ${value === 1 ? one : many}`;
  }

  function renderDiskTier(parts, tier) {
    parts.diskTier.hidden = !tier;
    if (!tier) {
      delete parts.card.dataset.diskTier;
      return;
    }
    parts.card.dataset.diskTier = tier.budget_bytes ? "on" : "off";
    if (!tier.budget_bytes) {
      parts.diskTierValue.textContent = "off";
      parts.diskTierMeter.hidden = true;
    } else {
      parts.diskTierMeter.hidden = false;
      parts.diskTierValue.textContent =
        `${count(tier.files, "file", "files")} · ${megabytes(tier.bytes)} of ${megabytes(tier.budget_bytes)}`;
      setMeter(parts.diskTierBar, tier.bytes / tier.budget_bytes);
    }
    const written = `${count(tier.writes, "state", "states")} written`;
    parts.diskTierHits.textContent = tier.hits
      ? `hit rate ${Math.round(tier.hit_rate * 100)}% (${count(tier.hits, "state", "states")} read back) · ${written}`
      : `nothing read back yet · ${written}`;
    // What an operator acts on: a disk that corrupts files, a directory
    // shared with another agent, a disk too slow for the writes.
    const problems = [];
    if (tier.corrupt) {
      problems.push(`${count(tier.corrupt, "corrupt file", "corrupt files")} deleted`);
    }
    if (tier.foreign) {
      problems.push(
        `${count(tier.foreign, "file", "files")} of another model or runtime left alone`,
      );
    }
    if (tier.dropped_writes) {
      problems.push(
        `${count(tier.dropped_writes, "state", "states")} not written (the disk fell behind)`,
      );
    }
    parts.diskTierProblems.textContent = problems.join(" · ");
    parts.diskTierProblems.hidden = problems.length === 0;
  }

  function renderAgents(agents) {
    const seen = new Set(agents.map((agent) => agent.id));
    for (const id of [...cards.keys()]) {
      if (!seen.has(id)) {
        cards.get(id).card.remove();
        cards.delete(id);
      }
    }
    const ordered = agents.map(renderAgent);
    agentsBox.replaceChildren(...ordered);
    noAgents.hidden = agents.length > 0;
  }

  function renderTiles(snapshot) {
    const agents = snapshot.agents;
    const processing = agents.reduce((sum, a) => sum + (a.slots_processing || 0), 0);
    const total = agents.reduce((sum, a) => sum + (a.slots_total || 0), 0);
    document.getElementById("agents-count").textContent = agents.length;
    document.getElementById("slots-value").textContent = `${processing} / ${total}`;
    setMeter(document.getElementById("slots-meter"), total ? processing / total : 0);
    const buffer = snapshot.buffer;
    document.getElementById("buffer-value").textContent = `${buffer.current} / ${buffer.max}`;
    setMeter(document.getElementById("buffer-meter"), buffer.max ? buffer.current / buffer.max : 0);
    const summary = (snapshot.requests || {}).summary;
    if (summary) {
      document.getElementById("requests-value").textContent = summary.requests;
      document.getElementById("requests-note").textContent =
        `${summary.errors} failed · ${number(summary.generated_tokens)} tokens generated`;
    }
  }

  // "381 ms", "12.4 s", "23.5 tokens/s".
  function quantity(value, unit) {
    if (unit !== "ms") return `${number(value, 1)} ${unit}`;
    if (value >= 10000) return `${number(value / 1000, 1)} s`;
    return `${number(value, value >= 100 ? 0 : 1)} ms`;
  }

  // A step up from ``value`` on a 1-2-5 scale, so the axis reads well.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  const SVG = "http://www.w3.org/2000/svg";

  function svgElement(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    return node;
  }

  function renderChart(figure, series, summary) {
    const name = figure.dataset.series;
    const values = series[name] || [];
    const unit = figure.dataset.unit;
    const max = niceMax(Math.max(0, ...values.filter((v) => v !== null)));
    const width = 300;
    const height = 100;
    const y = (v) => (height - (v / max) * (height - 6)).toFixed(2);
    const svg = figure.querySelector("svg");
    const nodes = [];
    for (const fraction of [0.25, 0.5, 0.75]) {
      const gy = (height - fraction * (height - 6)).toFixed(2);
      nodes.push(svgElement("line", { class: "grid", x1: 0, x2: width, y1: gy, y2: gy }));
    }
    // One bar per bucket; none where no request finished.
    const slot = width / Math.max(values.length, 1);
    let bars = 0;
    values.forEach((value, index) => {
      if (value === null) return;
      bars += 1;
      const top = Number(y(value));
      nodes.push(
        svgElement("rect", {
          class: "bar",
          x: (index * slot + slot * 0.15).toFixed(2),
          width: (slot * 0.7).toFixed(2),
          y: Math.min(top, height - 1).toFixed(2),
          height: Math.max(height - top, 1).toFixed(2),
        }),
      );
    });
    svg.replaceChildren(...nodes);
    const hasData = bars > 0;
    figure.querySelector(".chart-empty").hidden = hasData;
    figure.querySelector(".chart-max").textContent = hasData ? `top ${quantity(max, unit)}` : "";
    const now = summary ? summary[name] : null;
    figure.querySelector(".chart-now").textContent =
      now === null || now === undefined ? "–" : quantity(now, unit);
    figure.querySelector(".chart-now").title = "Mean over the last minute";
  }

  function render(snapshot) {
    renderTiles(snapshot);
    renderAgents(snapshot.agents);
    const requests = snapshot.requests || {};
    if (requests.series) {
      for (const figure of root.querySelectorAll("figure.chart")) {
        renderChart(figure, requests.series, requests.summary);
      }
    }
  }

  let retryMs = 1000;
  function connect() {
    const source = new EventSource(root.dataset.streamUrl);
    source.onopen = () => {
      retryMs = 1000;
      setLive("live", "Live");
    };
    source.onmessage = (event) => render(JSON.parse(event.data));
    source.onerror = () => {
      setLive("lost", "Reconnecting…");
      // The browser retries by itself unless the server refused the stream.
      if (source.readyState === EventSource.CLOSED) {
        window.setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 15000);
      }
    };
    window.addEventListener("pagehide", () => source.close(), { once: true });
  }
  connect();
})();
