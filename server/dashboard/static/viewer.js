// The viewer: one enhanced series beside its original (side by side, as a slider, or their difference), with
// synchronised zoom and pan, slice scrolling and window/level. Frames arrive as float32 modality values (HU for
// CT) and are windowed here, so 12- and 16-bit data is never truncated.
"use strict";
const CT_PRESETS = [["Brain", 40, 80], ["Soft tissue", 40, 400], ["Bone", 400, 1800], ["Lung", -600, 1500]];
const viewer = {
  info: null, meta: null, base: "", slice: 0, center: 0, width: 1, mode: "side", split: 0.5,
  zoom: 1, panX: 0, panY: 0, before: null, after: null, request: 0, drag: null,
  $: (id) => document.getElementById(id),
  el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  },
  async get(path, binary) {
    const r = await fetch(viewer.base + path, { credentials: "same-origin" });
    if (r.status === 401) { location.assign("/dashboard/login"); return null; }
    if (r.status === 404 && binary) return null;
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.detail ? body.detail.message : `HTTP ${r.status}`);
    }
    return binary ? new Float32Array(await r.arrayBuffer()) : r.json();
  },
  async start() {
    const q = new URLSearchParams(location.search);
    const study = q.get("study"), series = q.get("series");
    const status = viewer.$("status");
    if (!study || !series) { status.textContent = "No series chosen: open one from the studies list."; return; }
    viewer.base = `/dashboard/api/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
    try {
      viewer.info = await viewer.get("");
    } catch (e) {
      status.textContent = `This series cannot be shown: ${e.message}`;
      status.classList.add("down");
      return;
    }
    if (!viewer.info) return;
    viewer.meta = viewer.info.series;
    viewer.$("notice").textContent = viewer.info.notice;
    viewer.facts();
    if (!viewer.meta) {
      status.textContent = "The images of this series are neither kept by Aegle nor in the PACS.";
      return;
    }
    const m = viewer.meta;
    for (const id of ["before", "after", "slider", "difference"]) {
      viewer.$(id).width = m.columns;
      viewer.$(id).height = m.rows;
    }
    [viewer.center, viewer.width] = m.window;
    viewer.presets();
    const slice = viewer.$("slice");
    slice.max = String(m.slices - 1);
    viewer.slice = Math.floor(m.slices / 2);
    slice.value = String(viewer.slice);
    viewer.controls();
    await viewer.show(viewer.slice);
  },
  presets() {
    const box = viewer.$("presets");
    const list = [["Series", ...viewer.meta.window]];
    if (viewer.meta.modality === "CT") list.push(...CT_PRESETS);
    for (const [name, c, w] of list) {
      const b = viewer.el("button", name);
      b.type = "button";
      b.dataset.center = c;
      b.dataset.width = w;
      b.addEventListener("click", () => viewer.setWindow(c, w));
      box.append(b);
    }
    viewer.syncWindowInputs();
  },
  syncWindowInputs() {
    viewer.$("center").value = +viewer.center.toFixed(2);
    viewer.$("width").value = +viewer.width.toFixed(2);
    for (const b of viewer.$("presets").children) {
      b.setAttribute("aria-pressed", String(+b.dataset.center === viewer.center && +b.dataset.width === viewer.width));
    }
  },
  setWindow(center, width) {
    if (!Number.isFinite(center) || !Number.isFinite(width) || width <= 0) return;
    viewer.center = center;
    viewer.width = width;
    viewer.syncWindowInputs();
    viewer.render();
  },
  controls() {
    for (const r of document.querySelectorAll("input[name=mode]")) {
      r.addEventListener("change", () => { viewer.mode = r.value; viewer.layout(); viewer.render(); });
    }
    viewer.$("slice").addEventListener("input", (e) => viewer.show(+e.target.value));
    viewer.$("split").addEventListener("input", (e) => { viewer.split = +e.target.value / 100; viewer.render(); });
    viewer.$("center").addEventListener("change", (e) => viewer.setWindow(+e.target.value, viewer.width));
    viewer.$("width").addEventListener("change", (e) => viewer.setWindow(viewer.center, +e.target.value));
    viewer.$("reset").addEventListener("click", () => { viewer.zoom = 1; viewer.panX = viewer.panY = 0; viewer.render(); });
    const panes = viewer.$("viewer");
    panes.addEventListener("keydown", viewer.key);
    for (const canvas of panes.querySelectorAll("canvas")) {
      canvas.addEventListener("wheel", (e) => {
        e.preventDefault();
        const [x, y] = viewer.canvasPoint(canvas, e);
        viewer.zoomAt(Math.pow(1.15, -Math.sign(e.deltaY)), x, y);
      }, { passive: false });
      canvas.addEventListener("pointerdown", (e) => {
        canvas.setPointerCapture(e.pointerId);
        viewer.drag = { canvas, x: e.clientX, y: e.clientY };
      });
      canvas.addEventListener("pointermove", (e) => {
        const d = viewer.drag;
        if (!d || d.canvas !== canvas) return;
        const k = canvas.width / canvas.clientWidth;
        viewer.panX += (e.clientX - d.x) * k;
        viewer.panY += (e.clientY - d.y) * k;
        d.x = e.clientX;
        d.y = e.clientY;
        viewer.render();
      });
      canvas.addEventListener("pointerup", () => { viewer.drag = null; });
    }
    viewer.layout();
  },
  key(e) {
    const m = viewer.meta;
    const steps = { ArrowUp: -1, ArrowDown: 1, PageUp: -5, PageDown: 5 };
    if (e.key in steps) {
      viewer.show(Math.min(m.slices - 1, Math.max(0, viewer.slice + steps[e.key])));
    } else if (e.key === "+" || e.key === "=") {
      viewer.zoomAt(1.25, m.columns / 2, m.rows / 2);
    } else if (e.key === "-") {
      viewer.zoomAt(0.8, m.columns / 2, m.rows / 2);
    } else if (e.key === "0") {
      viewer.zoom = 1; viewer.panX = viewer.panY = 0; viewer.render();
    } else if ((e.key === "ArrowLeft" || e.key === "ArrowRight") && viewer.mode === "slider") {
      viewer.split = Math.min(1, Math.max(0, viewer.split + (e.key === "ArrowLeft" ? -0.05 : 0.05)));
      viewer.$("split").value = String(Math.round(viewer.split * 100));
      viewer.render();
    } else {
      return;
    }
    e.preventDefault();
  },
  canvasPoint(canvas, e) {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  },
  zoomAt(factor, x, y) {
    const zoom = Math.min(16, Math.max(0.5, viewer.zoom * factor));
    const k = zoom / viewer.zoom;
    viewer.panX = x - (x - viewer.panX) * k;
    viewer.panY = y - (y - viewer.panY) * k;
    viewer.zoom = zoom;
    viewer.render();
  },
  layout() {
    const mode = viewer.mode;
    viewer.$("pane-before").hidden = mode !== "side";
    viewer.$("pane-after").hidden = mode !== "side";
    viewer.$("pane-slider").hidden = mode !== "slider";
    viewer.$("pane-difference").hidden = mode !== "difference";
    viewer.$("split-label").hidden = mode !== "slider";
  },
  async show(index) {
    const ticket = ++viewer.request;
    const [after, before] = await Promise.all([
      viewer.get(`/frames/${index}?which=after`, true), viewer.get(`/frames/${index}?which=before`, true),
    ]).catch((e) => { viewer.$("status").textContent = `Slice ${index + 1} could not be read: ${e.message}`; return [null, null]; });
    if (ticket !== viewer.request || !after) return;
    viewer.slice = index;
    viewer.after = after;
    viewer.before = before;
    viewer.$("slice").value = String(index);
    viewer.$("slice-out").textContent = `${index + 1} / ${viewer.meta.slices}`;
    viewer.$("status").textContent = before ? "" : "The original of this series is not available (neither kept nor in the PACS): only the enhanced images are shown.";
    viewer.triage();
    viewer.render();
  },
  // A frame windowed to 8-bit grey on an offscreen canvas of the frame's own size.
  image(values, center, width) {
    const m = viewer.meta;
    const canvas = document.createElement("canvas");
    canvas.width = m.columns;
    canvas.height = m.rows;
    const ctx = canvas.getContext("2d");
    const out = ctx.createImageData(m.columns, m.rows);
    const low = center - width / 2, invert = m.photometric === "MONOCHROME1";
    for (let i = 0; i < values.length; i++) {
      let g = Math.round(((values[i] - low) / width) * 255);
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (invert) g = 255 - g;
      out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = g;
      out.data[4 * i + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    return canvas;
  },
  draw(canvas, image, clipFrom) {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (clipFrom === undefined) { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
    if (!image) return;
    ctx.save();
    ctx.setTransform(viewer.zoom, 0, 0, viewer.zoom, viewer.panX, viewer.panY);
    if (clipFrom !== undefined) {
      ctx.beginPath();
      ctx.rect(clipFrom, 0, canvas.width - clipFrom, canvas.height);
      ctx.clip();
    }
    ctx.imageSmoothingEnabled = viewer.zoom < 2;
    ctx.drawImage(image, 0, 0);
    ctx.restore();
  },
  render() {
    if (!viewer.after) return;
    const { center, width } = viewer;
    const after = viewer.image(viewer.after, center, width);
    const before = viewer.before && viewer.image(viewer.before, center, width);
    if (viewer.mode === "side") {
      viewer.draw(viewer.$("before"), before);
      viewer.draw(viewer.$("after"), after);
    } else if (viewer.mode === "slider") {
      const canvas = viewer.$("slider");
      viewer.draw(canvas, after);
      const x = viewer.split * viewer.meta.columns;
      viewer.draw(canvas, before, x);
      const ctx = canvas.getContext("2d");
      ctx.setTransform(viewer.zoom, 0, 0, viewer.zoom, viewer.panX, viewer.panY);
      ctx.strokeStyle = "#ffbf00";
      ctx.lineWidth = 1.5 / viewer.zoom;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, viewer.meta.rows); ctx.stroke();
    } else {
      viewer.draw(viewer.$("difference"), viewer.differenceImage());
    }
    viewer.$("viewer").dataset.rendered = `${viewer.slice}:${center}:${width}:${viewer.mode}`;
  },
  // Enhanced − original, mid-grey at zero, ± the 99th percentile of |difference| of this slice at black and white.
  differenceImage() {
    if (!viewer.before) return null;
    const d = new Float32Array(viewer.after.length);
    for (let i = 0; i < d.length; i++) d[i] = viewer.after[i] - viewer.before[i];
    const mags = Float32Array.from(d, Math.abs).sort();
    const span = Math.max(mags[Math.floor(0.99 * (mags.length - 1))], 1e-6);
    const units = viewer.meta.units ? ` ${viewer.meta.units}` : "";
    viewer.$("difference-caption").textContent = `Enhanced − original (black −${span.toPrecision(3)}${units}, grey 0, white +${span.toPrecision(3)}${units})`;
    return viewer.image(d, 0, 2 * span);
  },
  facts() {
    const i = viewer.info, m = i.series;
    const dl = viewer.$("series-facts");
    const add = (term, value) => { dl.append(viewer.el("dt", term), viewer.el("dd", value)); };
    add("Status", i.status || "—");
    if (m) {
      add("Modality", m.modality || "—");
      add("Matrix", m.source_rows ? `${m.source_columns}×${m.source_rows} → ${m.columns}×${m.rows}` : `${m.columns}×${m.rows}`);
      add("Slices", String(m.slices));
      add("Images from", m.from === "pacs" ? "the PACS (WADO-RS)" : "Aegle's own copy");
    }
    add("Model", i.model ? `${i.model} ${i.model_version}` : "—");
    add("Enhancement strength", i.strength == null ? "—" : i.strength.toFixed(3));
    add("Acquired", i.acquired_at ? new Date(i.acquired_at).toLocaleString() : "—");
    const ctx = viewer.$("context");
    const c = i.context;
    if (!c) {
      ctx.append(viewer.el("p", "None: enhanced without vitals (no context for this patient at acquisition time)."));
    } else {
      ctx.append(viewer.el("p", `At ${new Date(c.at).toLocaleString()}, window ${c.window_s} s, completeness ${Math.round(100 * c.completeness)} %.`));
      const table = viewer.el("table", undefined, "compact");
      const head = viewer.el("tr");
      for (const h of ["Channel", "Value", "Age"]) { const th = viewer.el("th", h); th.scope = "col"; head.append(th); }
      table.append(head);
      for (const ch of i.channels) {
        const row = viewer.el("tr");
        const level = c.levels ? c.levels[ch.key] : null;
        const age = c.ages_s ? c.ages_s[ch.key] : null;
        row.append(viewer.el("td", ch.name), viewer.el("td", level == null ? "missing" : `${+level.toFixed(2)} ${ch.unit}`),
                   viewer.el("td", age == null ? "—" : `${Math.round(age)} s`));
        if (level == null) row.className = "missing";
        table.append(row);
      }
      ctx.append(table);
      if (i.missing_channels && i.missing_channels.length) {
        ctx.append(viewer.el("p", `Missing: ${i.missing_channels.join(", ")}.`));
      }
    }
    const problems = viewer.$("problems");
    const all = [...(i.failures || []), ...(i.warnings || [])];
    if (!all.length) problems.append(viewer.el("p", "None."));
    for (const f of all) problems.append(viewer.el("p", `${f.reason}: ${f.detail}`));
  },
  triage() {
    const box = viewer.$("triage");
    box.replaceChildren();
    const uids = viewer.meta.source_sop_instance_uids;
    const t = uids ? viewer.info.triage[uids[viewer.slice]] : null;
    if (!t) { box.append(viewer.el("p", "No triage result for this slice.")); return; }
    box.append(viewer.el("p", `${t.enhance ? "Enhancement advised" : "Enhancement not advised"}: ${t.reason}`));
    const probs = t.probabilities || {};
    const table = viewer.el("table", undefined, "compact");
    for (const [name, p] of Object.entries(probs)) {
      const row = viewer.el("tr");
      row.append(viewer.el("td", name.replaceAll("_", " ")), viewer.el("td", `${Math.round(100 * p)} %`));
      if (t.degradations.includes(name)) row.className = "flagged";
      table.append(row);
    }
    box.append(table);
  },
};
document.addEventListener("DOMContentLoaded", async () => {
  if (!(await aegle.load())) return;
  await viewer.start();
});
