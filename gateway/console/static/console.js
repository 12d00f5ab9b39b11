// The console's live updates: one server-sent event stream (/stream), applied to the page.
// "accounts": per account, the fields shown in elements under [data-account="ID"] that carry
// a data-field attribute; "events": new journal events, added at the top of the live feed.
"use strict";
(function () {
  if (!document.getElementById("live")) return; // not logged in
  const rows = document.getElementById("event-rows");
  const query = rows ? "?after=" + document.body.dataset.after : "";
  const source = new EventSource("/stream" + query);
  const live = document.getElementById("live");
  source.onopen = function () { live.classList.add("on"); };
  source.onerror = function () { live.classList.remove("on"); };
  source.addEventListener("accounts", function (message) {
    const accounts = JSON.parse(message.data);
    document.querySelectorAll("[data-account]").forEach(function (scope) {
      const values = accounts[scope.dataset.account];
      if (!values) return;
      scope.querySelectorAll("[data-field]").forEach(function (cell) {
        const value = values[cell.dataset.field];
        if (value !== undefined && cell.textContent !== String(value)) {
          cell.textContent = value;
          cell.classList.add("changed");
        }
      });
    });
  });
  source.addEventListener("events", function (message) {
    if (!rows) return;
    JSON.parse(message.data).forEach(function (event) {
      const tr = document.createElement("tr");
      [event.id, event.at, event.account, event.kind, event.detail].forEach(function (text) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      rows.insertBefore(tr, rows.firstChild);
    });
  });
})();
