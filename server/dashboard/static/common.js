// Shared by the dashboard's pages: who is logged in, the logout form's CSRF token, the views this role may open.
"use strict";
const aegle = {
  session: null,
  async load() {
    const r = await fetch("/dashboard/api/session", { credentials: "same-origin" });
    if (r.status === 401) { location.assign("/dashboard/login"); return null; }
    if (!r.ok) return null;
    const s = await r.json();
    aegle.session = s;
    document.getElementById("who").textContent = `${s.name} (${s.role})`;
    document.getElementById("csrf").value = s.csrf;
    for (const a of document.querySelectorAll("nav a[data-view]")) a.hidden = !s.views.includes(a.dataset.view);
    return s;
  },
  // A stream of JSON events; reconnects (the server ends each stream after a while) and goes to the login page
  // when the session is over.
  stream(url, onEvent, onState) {
    let source = null;
    const open = () => {
      source = new EventSource(url);
      source.onopen = () => onState(true);
      source.onmessage = (m) => {
        const event = JSON.parse(m.data);
        if (event.type === "ended") { location.assign("/dashboard/login"); return; }
        onEvent(event);
      };
      source.onerror = async () => {
        onState(false);
        if (source.readyState !== EventSource.CLOSED) return;  // the browser reconnects by itself
        const r = await fetch("/dashboard/api/session", { credentials: "same-origin" }).catch(() => null);
        if (r && r.status === 401) { location.assign("/dashboard/login"); return; }
        setTimeout(open, 2000);
      };
    };
    open();
  },
  age(seconds) {
    if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    return `${Math.round(seconds / 3600)} h ago`;
  },
};
