// Tranche status page: replaces the live part with each server-sent update.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  var updated = document.getElementById("updated");
  if (!live || !window.EventSource) { return; }
  function show(text, kind) { conn.textContent = text; conn.className = "conn " + kind; }
  var events = new EventSource(live.getAttribute("data-events"));
  events.addEventListener("open", function () { show("live", "ok"); });
  events.addEventListener("update", function (e) {
    live.innerHTML = e.data;
    updated.textContent = new Date().toISOString().slice(11, 19) + " UTC";
    show("live", "ok");
  });
  events.addEventListener("gone", function () {
    events.close();
    show("this link was revoked or has expired", "bad");
  });
  events.addEventListener("error", function () {
    if (events.readyState !== EventSource.CLOSED) { show("reconnecting…", "warn"); }
  });
}());
