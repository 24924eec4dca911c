// The ward view: every patient's newest vitals, pushed by the server (Server-Sent Events), flags and stale marks.
"use strict";
const ward = {
  channels: [], staleAfterMs: 30000, offsetMs: 0, patients: new Map(), trends: new Map(), windowMs: 300000,
  pending: new Map(), frame: 0, bucketMs: 10000,
  el: (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  },
  serverNow() { return Date.now() + ward.offsetMs; },
  header() {
    const row = document.getElementById("ward-head");
    row.replaceChildren(ward.el("th", "", "Patient"));
    row.firstChild.scope = "col";
    for (const c of ward.channels) {
      const th = ward.el("th");
      th.scope = "col";
      const abbr = ward.el("abbr", "", c.label);
      abbr.title = c.name;
      th.append(abbr, ward.el("span", "unit", ` ${c.unit}`));
      row.append(th);
    }
    for (const name of ["Context", "Updated"]) { const th = ward.el("th", "", name); th.scope = "col"; row.append(th); }
  },
  // One point per 10 s bucket (the newest value), as the server's trends: a row costs the same however long it runs.
  trend(patientId, channel, reading) {
    const key = `${patientId}/${channel}`;
    const points = ward.trends.get(key) || [];
    const last = points[points.length - 1];
    if (!last || last[0] < reading.t_ms) {
      const bucket = Math.floor(reading.t_ms / ward.bucketMs);
      if (last && Math.floor(last[0] / ward.bucketMs) === bucket) points.pop();
      points.push([reading.t_ms, reading.value]);
    }
    while (points.length && points[0][0] < reading.t_ms - ward.windowMs) points.shift();
    ward.trends.set(key, points);
    return points;
  },
  sparkline(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "trend");
    svg.setAttribute("viewBox", "0 0 100 20");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    if (points.length < 2) return svg;
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const vs = points.map((p) => p[1]);
    const lo = Math.min(...vs), hi = Math.max(...vs), span = hi - lo || 1;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map(([t, v]) =>
      `${((t - t0) / (t1 - t0 || 1) * 100).toFixed(1)},${(18 - (v - lo) / span * 16).toFixed(1)}`).join(" "));
    svg.append(line);
    return svg;
  },
  sig: (reading) => (reading ? `${reading.t_ms}|${reading.value}|${reading.flag}` : "none"),
  cell(patientId, channel, reading) {
    const td = ward.el("td", "v");
    td.dataset.channel = channel.key;
    td.dataset.sig = ward.sig(reading);
    if (!reading) {
      td.append(ward.el("span", "num", "—"));
      td.title = `${channel.name}: no value in the context window`;
      return td;
    }
    td.dataset.t = reading.t_ms;
    if (reading.flag) td.dataset.flag = reading.flag;
    const mark = reading.flag === "high" ? "▲ " : reading.flag === "low" ? "▼ " : "";
    if (mark) td.append(ward.el("span", "mark", mark));
    td.append(ward.el("span", "num", String(reading.value)), ward.el("span", "unit", ` ${channel.unit}`));
    if (reading.flag) td.append(ward.el("span", "visually-hidden", ` (${reading.flag})`));
    td.append(ward.el("span", "age"));
    td.append(ward.sparkline(ward.trends.get(`${patientId}/${channel.key}`) || []));
    return td;
  },
  row(view) {
    const tr = ward.el("tr");
    tr.dataset.patient = view.patient_id;
    const th = ward.el("th", "", view.patient_id);
    th.scope = "row";
    if (view.site) th.append(ward.el("span", "age", view.site));
    tr.append(th);
    let newest = 0;
    for (const c of ward.channels) {
      const reading = view.values[c.key];
      if (reading) newest = Math.max(newest, reading.t_ms);
      tr.append(ward.cell(view.patient_id, c, reading));
    }
    tr.append(ward.contextCell(view.context));
    const updated = ward.el("td", "updated");
    updated.dataset.t = newest;
    tr.append(updated);
    return tr;
  },
  // An existing row takes only the cells whose reading (or context) changed: no rebuild of the whole row.
  update(tr, view) {
    let newest = 0;
    for (const c of ward.channels) {
      const reading = view.values[c.key];
      if (reading) newest = Math.max(newest, reading.t_ms);
      const old = tr.querySelector(`td[data-channel="${c.key}"]`);
      if (!old || old.dataset.sig !== ward.sig(reading)) {
        const cell = ward.cell(view.patient_id, c, reading);
        if (old) old.replaceWith(cell);
      }
    }
    const ctx = tr.querySelector("td.context");
    if (ctx.dataset.sig !== ward.contextSig(view.context)) ctx.replaceWith(ward.contextCell(view.context));
    tr.querySelector("td.updated").dataset.t = newest;
  },
  contextSig: (context) => `${context.completeness}|${context.missing.join(",")}`,
  // The context the enhancer would see now: completeness and the channels missing.
  contextCell(context) {
    const ctx = ward.el("td", "context");
    ctx.dataset.sig = ward.contextSig(context);
    const pct = Math.round(context.completeness * 100);
    const meter = ward.el("span", "meter");
    meter.append(ward.el("span"));
    meter.firstChild.style.width = `${pct}%`;
    ctx.append(meter, ward.el("span", "pct", `${pct}%`));
    ctx.dataset.completeness = context.completeness;
    const missing = context.missing.map((k) => (ward.channels.find((c) => c.key === k) || { label: k }).label);
    ctx.title = missing.length ? `missing from the context: ${missing.join(", ")}` : "every channel present";
    if (missing.length) ctx.append(ward.el("span", "age", `missing: ${missing.join(", ")}`));
    return ctx;
  },
  // A patient's new values: the trend takes every reading at once, the row is redrawn once per animation frame
  // with the newest view (a busy ward costs one redraw per patient per frame, not one per message).
  queue(view) {
    for (const c of ward.channels) {
      const reading = view.values[c.key];
      if (reading) ward.trend(view.patient_id, c.key, reading);
    }
    ward.pending.set(view.patient_id, view);
    if (!ward.frame) ward.frame = requestAnimationFrame(ward.flush);
  },
  flush() {
    ward.frame = 0;
    for (const view of ward.pending.values()) ward.upsert(view);
    ward.pending.clear();
    document.getElementById("empty").hidden = ward.patients.size > 0;
  },
  upsert(view) {
    const old = ward.patients.get(view.patient_id);
    if (old) {
      ward.update(old, view);
      ward.tick(old);
      return;
    }
    const body = document.getElementById("ward-body");
    const tr = ward.row(view);
    const next = [...body.children].find((r) => r.dataset.patient > view.patient_id);
    body.insertBefore(tr, next || null);
    ward.patients.set(view.patient_id, tr);
    ward.tick(tr);
  },
  remove(patientId) {
    const tr = ward.patients.get(patientId);
    if (tr) tr.remove();
    ward.patients.delete(patientId);
  },
  // Ages and stale marks move with the clock: recomputed every second here, not asked of the server.
  tick(root) {
    const now = ward.serverNow();
    for (const td of root.querySelectorAll("td.v[data-t]")) {
      const age = (now - Number(td.dataset.t)) / 1000;
      td.dataset.stale = age * 1000 > ward.staleAfterMs;
      td.querySelector(".age").textContent = td.dataset.stale === "true" ? `stale · ${aegle.age(age)}` : aegle.age(age);
    }
    for (const td of root.querySelectorAll("td.updated")) {
      td.textContent = Number(td.dataset.t) ? aegle.age((now - Number(td.dataset.t)) / 1000) : "—";
    }
    document.getElementById("empty").hidden = ward.patients.size > 0;
  },
  onEvent(event) {
    if (event.now_ms) ward.offsetMs = event.now_ms - Date.now();
    if (event.type === "ward") {
      ward.channels = event.channels;
      ward.staleAfterMs = event.stale_after_s * 1000;
      document.getElementById("stale-after").textContent = event.stale_after_s;
      document.getElementById("window").textContent = event.window_s;
      ward.windowMs = event.window_s * 1000;
      ward.trends.clear();
      for (const [patientId, channels] of Object.entries(event.trends)) {
        for (const [channel, points] of Object.entries(channels)) ward.trends.set(`${patientId}/${channel}`, points);
      }
      ward.header();
      document.getElementById("ward-body").replaceChildren();
      ward.patients.clear();
      ward.pending.clear();
      for (const view of event.patients) ward.upsert(view);
      ward.status(event.error);
      ward.tick(document);
    } else if (event.type === "patients") { for (const view of event.patients) ward.queue(view); }
    else if (event.type === "removed") { ward.pending.delete(event.patient_id); ward.remove(event.patient_id); }
    else if (event.type === "status") ward.status(event.error);
  },
  status(error) {
    const p = document.getElementById("status");
    p.classList.toggle("down", Boolean(error));
    p.textContent = error ? `Not live: ${error}` : "Live";
  },
};
aegle.load().then((s) => {
  if (!s) return;
  aegle.stream("/dashboard/api/ward/events", ward.onEvent, (up) => { if (!up) ward.status("reconnecting…"); });
  setInterval(() => ward.tick(document), 1000);
});
