// Shows every <time data-local datetime="ISO"> in the visitor's own timezone and runs
// every [data-countdown="ISO"] timer. Server-rendered text (UTC) stays as the fallback without JS.
(function () {
  "use strict";
  var fmt;
  try {
    fmt = new Intl.DateTimeFormat(undefined, {
      weekday: "short", day: "numeric", month: "short", year: "numeric",
      hour: "2-digit", minute: "2-digit", timeZoneName: "short"
    });
  } catch (e) { fmt = null; }

  function localize(root) {
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      if (!el.dataset.utc) el.dataset.utc = el.textContent;
      el.textContent = fmt ? fmt.format(when) : when.toLocaleString();
      el.title = "In your timezone" + (el.dataset.utc ? " (" + el.dataset.utc + ")" : "");
    });
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function tick() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var target = new Date(el.getAttribute("data-countdown"));
      if (isNaN(target.getTime())) return;
      var ms = target - new Date();
      if (ms <= 0) { el.textContent = el.dataset.doneText || "now"; return; }
      var s = Math.floor(ms / 1000), d = Math.floor(s / 86400);
      var clock = pad(Math.floor(s % 86400 / 3600)) + ":" + pad(Math.floor(s % 3600 / 60)) + ":" + pad(s % 60);
      el.textContent = (d ? d + (d === 1 ? " day " : " days ") : "") + clock;
    });
  }

  function start() { localize(document); tick(); setInterval(tick, 1000); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  document.addEventListener("htmx:afterSwap", function (e) { localize(e.target); });
})();
