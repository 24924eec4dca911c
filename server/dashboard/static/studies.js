// The studies list: every series Aegle processed, with a link to the viewer for those it enhanced.
"use strict";
const studies = {
  cell(row, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    row.append(td);
    return td;
  },
  short: (uid) => (uid && uid.length > 18 ? `…${uid.slice(-16)}` : uid || "—"),
  async load() {
    const status = document.getElementById("status");
    const r = await fetch("/dashboard/api/studies", { credentials: "same-origin" });
    if (r.status === 401) { location.assign("/dashboard/login"); return; }
    if (!r.ok) { status.textContent = `The study list could not be read (HTTP ${r.status}).`; status.classList.add("down"); return; }
    const body = await r.json();
    document.getElementById("notice").textContent = body.notice;
    const tbody = document.getElementById("studies-body");
    tbody.replaceChildren();
    for (const s of body.results) {
      const row = document.createElement("tr");
      studies.cell(row, new Date(s.at).toLocaleString());
      const study = studies.cell(row, studies.short(s.study_uid));
      study.title = s.study_uid;
      const st = studies.cell(row, s.status || "—", s.status === "ok" ? "ok" : (s.status === "skipped" ? "" : "down"));
      if (s.reasons.length) st.title = s.reasons.join(", ");
      studies.cell(row, `${s.counts.enhanced ?? 0} of ${s.counts.received ?? 0}`);
      studies.cell(row, s.triage_total ? `${s.triage_enhance} of ${s.triage_total}` : "—");
      studies.cell(row, s.context_completeness == null ? "no vitals" : `${Math.round(100 * s.context_completeness)} %`);
      studies.cell(row, s.model ? `${s.model} ${s.model_version}` : "—");
      studies.cell(row, s.strength == null ? "—" : s.strength.toFixed(2));
      const view = studies.cell(row, "");
      if (s.derived_series_uid && s.status !== "failed") {
        const a = document.createElement("a");
        a.href = `/dashboard/viewer?study=${encodeURIComponent(s.study_uid)}&series=${encodeURIComponent(s.derived_series_uid)}`;
        a.textContent = "Open";
        a.setAttribute("aria-label", `Open series ${studies.short(s.derived_series_uid)} in the viewer`);
        view.append(a);
      } else {
        view.textContent = "—";
      }
      tbody.append(row);
    }
    document.getElementById("empty").hidden = body.results.length > 0;
    status.textContent = `${body.results.length} series. Updated ${new Date().toLocaleTimeString()}.`;
  },
};
document.addEventListener("DOMContentLoaded", async () => {
  if (!(await aegle.load())) return;
  await studies.load();
  setInterval(studies.load, 15000);
});
