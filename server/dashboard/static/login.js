// A login link (`/dashboard/login#token=…`, printed by `aegle demo`): the token travels in the URL fragment, which
// the browser never sends to a server; it is put into the form, removed from the address bar and submitted.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const match = location.hash.match(/^#token=([A-Za-z0-9_\-.~]+)$/);
  if (!match) return;
  history.replaceState(null, "", location.pathname);
  document.getElementById("token").value = decodeURIComponent(match[1]);
  document.querySelector("form").submit();
});
