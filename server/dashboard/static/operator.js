// The operator view: the readiness of every component (the same probes as /readyz), models, series, failures.
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
