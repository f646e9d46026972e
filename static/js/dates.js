// Shows each <time data-local> in the visitor's own timezone and runs <span data-countdown> timers.
(function () {
  function localize(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      var target = el.parentElement.querySelector(".local-time") || el;
      var text = when.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
      if (target !== el) target.textContent = "your time: " + text;
      else el.title = "your time: " + text;
    });
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  function tick() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var ms = new Date(el.getAttribute("data-countdown")) - new Date();
      if (ms <= 0) { el.textContent = "now"; return; }
      var s = Math.floor(ms / 1000), d = Math.floor(s / 86400);
      el.textContent = (d ? d + "d " : "") + pad(Math.floor(s % 86400 / 3600)) + ":" + pad(Math.floor(s % 3600 / 60)) + ":" + pad(s % 60);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localize(document); tick(); setInterval(tick, 1000); });
  document.addEventListener("htmx:afterSwap", function (e) { localize(e.target); });
})();
