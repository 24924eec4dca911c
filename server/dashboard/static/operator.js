// The operator view: the readiness of every component (the same probes as /readyz), models, series, failures,
// edge nodes, ingest rate and dead letters, and the audit log for the roles that may read it.
"use strict";
const op = {
  el: (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  },
  rows(tableId, rows) {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren(...rows.map((cells) => {
      const tr = op.el("tr");
      for (const c of cells) tr.append(c instanceof Node ? c : op.el("td", "", String(c)));
      return tr;
    }));
  },
  state(ok) {
    const td = op.el("td");
    td.append(op.el("span", ok ? "ok" : "down", ok ? "✓ up" : "✗ down"));
    return td;
  },
  // online / stale / offline, as a symbol and a word as well as a colour.
  presence(state) {
    const td = op.el("td");
    const [cls, text] = { online: ["ok", "✓ online"], stale: ["warn", "⚠ stale"] }[state] || ["down", "✗ offline"];
    td.append(op.el("span", cls, text));
    return td;
  },
  duration(seconds) {
    return seconds < 90 ? `${Math.round(seconds)} s` : seconds < 5400 ? `${Math.round(seconds / 60)} min`
      : `${Math.round(seconds / 3600)} h`;
  },
  time(ms) {
    return new Date(ms).toLocaleTimeString();
  },
  header(text) {
    const th = op.el("th", "", text);
    th.scope = "row";
    return th;
  },
  // Rows of a table, each tagged with data-* attributes (what a test or a stylesheet can select on).
  tagged(tableId, items, cells, tags, empty) {
    op.rows(tableId, items.length ? items.map(cells) : [empty]);
    if (!items.length) return;
    document.querySelectorAll(`#${tableId} tbody tr`).forEach((tr, i) => Object.assign(tr.dataset, tags(items[i])));
  },
  monitored(event) {
    const note = document.getElementById("monitor");
    if (event.mqtt === null) {
      note.textContent = "Not monitored: the service has no MQTT login (AEGLE_MQTT__USERNAME) or its inputs did not start.";
    } else {
      note.textContent = event.mqtt.connected ? "" : `Not connected to the broker: ${event.mqtt.error || "connecting…"}`;
    }
    const seen = (ms) => aegle.age((event.now_ms - ms) / 1000);
    op.tagged("edges", event.edges, (e) => {
      const q = (e.queue || {}).dicom || {}, c = e.counts || {};
      return [op.header(e.edge_id), e.site, op.presence(e.state), q.depth ?? "—",
        q.oldest_age_s == null ? "—" : op.duration(q.oldest_age_s), c.forwarded ?? "—", c.retried ?? "—",
        c.refused ?? "—", seen(e.last_seen_ms), e.last_error || ""];
    }, (e) => ({ edge: e.edge_id, state: e.state, queue: ((e.queue || {}).dicom || {}).depth ?? "" }),
    ["—", "no edge node has reported", "", "", "", "", "", "", "", ""]);
    const ingest = event.ingest || { rate_per_s: null, workers: [] };
    document.getElementById("ingest-rate").textContent = ingest.rate_per_s === null ? "" :
      `Ingest rate: ${ingest.rate_per_s.toFixed(1)} messages/s over the last minute (workers online).`;
    const count = (reasons) => Object.values(reasons || {}).reduce((a, b) => a + b, 0);
    op.tagged("workers", ingest.workers, (w) => [op.header(w.worker_id), op.presence(w.state),
      typeof w.rate_per_s === "number" ? w.rate_per_s.toFixed(1) : "—", w.received ?? "—", w.stored ?? "—",
      count(w.deadlettered), seen(w.last_seen_ms)],
    (w) => ({ worker: w.worker_id, state: w.state }), ["—", "no ingest worker has reported", "", "", "", "", ""]);
    const letters = event.deadletters || { total: 0, by_reason: {}, recent: [], since_ms: null };
    document.getElementById("deadletter-total").textContent = letters.since_ms === null ? "" :
      `${letters.total} dead letters since ${op.time(letters.since_ms)} (the service's start).`;
    op.tagged("deadletter-reasons", Object.entries(letters.by_reason), ([reason, n]) => [op.header(reason), n],
      ([reason, n]) => ({ reason, count: n }), ["—", "none"]);
    op.tagged("deadletters", letters.recent, (d) => [op.time(d.at_ms), d.reason, d.site, d.topic || "—"],
      (d) => ({ reason: d.reason }), ["—", "none", "", ""]);
    const section = document.getElementById("audit-section");
    section.hidden = event.audit === null;
    if (event.audit !== null) {
      op.tagged("audit", event.audit, (a) => [a.at.replace("T", " ").slice(0, 19), a.actor, a.role, a.action,
        a.resource, a.client, a.detail], (a) => ({ action: a.action }), ["—", "no entries", "", "", "", "", ""]);
    }
  },
  onEvent(event) {
    if (event.type !== "operator") return;
    document.getElementById("overall").replaceChildren(
      op.el("span", event.ready ? "ok" : "down", event.ready ? "✓ Ready" : "✗ Not ready"));
    const checks = Object.entries(event.checks);
    op.rows("checks", checks.map(([name, c]) => {
      const th = op.el("th", "", name);
      th.scope = "row";
      return [th, op.state(c.ok), c.reason];
    }));
    document.querySelectorAll("#checks tbody tr").forEach((tr, i) => {
      tr.dataset.component = checks[i][0];
      tr.dataset.ok = checks[i][1].ok;
    });
    const served = event.models.served || {};
    const paths = {};
    for (const role of Object.keys(served)) if (served[role]) paths[served[role].name] = served[role].paths.join(", ");
    const rows = (event.models.models || []).map((m) => [m.name, m.version, m.backend, paths[m.name] || ""]);
    for (const [name, why] of Object.entries(event.models.missing || {})) rows.push([name, "—", "not loaded", why]);
    if (event.models.engine_error) rows.push(["inference engine", "—", "not started", event.models.engine_error]);
    op.rows("models", rows);
    document.getElementById("queue").textContent =
      event.queue_depth === null ? "" : `Inference queue: ${event.queue_depth} waiting.`;
    document.getElementById("series").textContent =
      `${event.series.processed} series processed, ${event.series.failed} failed since the service started.`;
    if (event.failures === null) {
      op.rows("failures", [["—", "your role may not list studies", "", ""]]);
    } else {
      op.rows("failures", event.failures.length ? event.failures.map((f) =>
        [f.at.replace("T", " ").slice(0, 19), f.study_uid, f.status, f.reasons.join(", ")]) : [["—", "none", "", ""]]);
    }
    op.monitored(event);
    const status = document.getElementById("status");
    status.classList.toggle("down", false);
    status.textContent = `Live · checked ${new Date(event.now_ms).toLocaleTimeString()}`;
  },
};
aegle.load().then((s) => {
  if (!s) return;
  aegle.stream("/dashboard/api/operator/events", op.onEvent, (up) => {
    if (up) return;
    const status = document.getElementById("status");
    status.classList.add("down");
    status.textContent = "Reconnecting…";
  });
});
