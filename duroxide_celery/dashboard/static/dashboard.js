// duroxide dashboard: live refresh of a running instance and confirmations; plain JS, no build step.
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });

  var live = document.getElementById("live");
  if (!live || live.getAttribute("data-running") !== "true") return;
  var url = live.getAttribute("data-url");
  var parts = ["summary", "waits", "timeline", "history", "kv", "tree"];
  var lastEvents = live.getAttribute("data-events");
  var delayMs = 1500;

  function swap(id, html) {
    var target = document.getElementById(id);
    if (!target || target.innerHTML === html) return;
    // Keep the operator's open <details> open across the refresh.
    var open = {};
    target.querySelectorAll("details[open][data-key]").forEach(function (d) { open[d.getAttribute("data-key")] = true; });
    target.innerHTML = html;
    target.querySelectorAll("details[data-key]").forEach(function (d) {
      if (open[d.getAttribute("data-key")]) d.open = true;
    });
  }

  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 404) {  // deleted meanwhile: nothing more to follow
          var status = document.getElementById("status");
          if (status) status.textContent = "Deleted";
          live.setAttribute("data-running", "false");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (doc) {
        if (doc === null) return;
        parts.forEach(function (part) {
          if (part === "history" && String(doc.event_count) === lastEvents) return;
          swap(part, doc.html[part]);
        });
        lastEvents = String(doc.event_count);
        live.setAttribute("data-status", doc.status);
        if (doc.terminal) {
          live.setAttribute("data-running", "false");  // finished: nothing more will change
          return;
        }
        window.setTimeout(poll, delayMs);
      })
      .catch(function () { window.setTimeout(poll, delayMs * 4); });
  }
  window.setTimeout(poll, delayMs);
})();
