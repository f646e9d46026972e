// The Pareto plot of a track: one point per team entry, the frontier drawn and highlighted.
// Data comes from the page (json_script "pareto-data") and, when an axis changes, from pareto.json.
(function () {
  "use strict";
  var plot = document.getElementById("pareto-plot");
  var dataEl = document.getElementById("pareto-data");
  if (!plot || typeof Plotly === "undefined") return;
  var controls = document.querySelector(".pareto-controls");
  var highlight = parseInt(plot.dataset.highlight || "", 10);
  // Embedded by the page, or (on the board, to keep it light) fetched from pareto.json.
  var state = dataEl ? JSON.parse(dataEl.textContent) : null;

  var fmt = function (v) {
    if (v === null || v === undefined) return "—";
    if (Math.abs(v) >= 1e9) return (v / 1e9).toFixed(2) + " G";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + " M";
    if (Math.abs(v) >= 1e4) return Math.round(v).toLocaleString();
    return Number(v.toPrecision(4)).toString();
  };
  var esc = function (s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
  };

  function render() {
    var pts = state.points.filter(function (p) { return p.x !== null && p.y !== null; });
    var byId = {};
    pts.forEach(function (p) { byId[p.submission_id] = p; });
    var frontier = state.frontier.map(function (id) { return byId[id]; }).filter(Boolean);
    var hover = function (p) {
      return "<b>" + esc(p.team) + "</b> · #" + p.submission_id + " · rank " + p.rank +
        "<br>" + esc(state.x_label) + ": " + fmt(p.x) + "<br>" + esc(state.y_label) + ": " + fmt(p.y) +
        "<br>" + esc(p.base_model) + (p.on_frontier ? "<br><i>on the frontier</i>" : "") + "<extra></extra>";
    };
    var marker = function (list, color, size) {
      return {
        size: list.map(function (p) { return p.submission_id === highlight ? 18 : size; }),
        color: color,
        symbol: list.map(function (p) { return p.submission_id === highlight ? "star" : "circle"; }),
        line: {width: 1, color: "#fff"}
      };
    };
    var others = pts.filter(function (p) { return !p.on_frontier; });
    var entries = {
      type: "scatter", mode: "markers", name: "Entries",
      x: others.map(function (p) { return p.x; }), y: others.map(function (p) { return p.y; }),
      customdata: others.map(function (p) { return p.url; }), hovertemplate: others.map(hover),
      marker: marker(others, "rgba(91, 91, 214, 0.6)", 9)
    };
    // The frontier's own entries, drawn as a staircase (the best score reachable with no more compute).
    var front = {
      type: "scatter", mode: "lines+markers", name: "Pareto frontier",
      x: frontier.map(function (p) { return p.x; }), y: frontier.map(function (p) { return p.y; }),
      customdata: frontier.map(function (p) { return p.url; }), hovertemplate: frontier.map(hover),
      line: {shape: "hv", color: "#e8590c", width: 2.5}, marker: marker(frontier, "#e8590c", 12)
    };
    var layout = {
      margin: {l: 60, r: 16, t: 16, b: 56}, hovermode: "closest", showlegend: true,
      legend: {orientation: "h", x: 0, y: 1.08}, font: {family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12},
      xaxis: {title: {text: state.x_label}, type: document.getElementById("pareto-logx").checked ? "log" : "linear", zeroline: false, gridcolor: "#eee"},
      yaxis: {title: {text: state.y_label}, type: document.getElementById("pareto-logy").checked ? "log" : "linear", zeroline: false, gridcolor: "#eee"},
      plot_bgcolor: "#fff", paper_bgcolor: "#fff"
    };
    Plotly.react(plot, [entries, front], layout, {responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"]});
    plot.dataset.points = String(pts.length);
    plot.dataset.frontier = String(frontier.length);
    if (!plot.dataset.rendered) {
      plot.on("plotly_click", function (ev) {
        var p = ev.points && ev.points[0];
        if (p && p.customdata) window.location.href = p.customdata;
      });
    }
    plot.dataset.rendered = "1";
  }

  function reload() {
    var url = new URL(controls.dataset.paretoUrl, window.location.href);
    url.searchParams.set("x", document.getElementById("pareto-x").value);
    url.searchParams.set("y", document.getElementById("pareto-y").value);
    fetch(url, {headers: {Accept: "application/json"}}).then(function (r) { return r.json(); }).then(function (data) {
      state = data;
      render();
    });
  }

  ["pareto-x", "pareto-y"].forEach(function (id) { document.getElementById(id).addEventListener("change", reload); });
  ["pareto-logx", "pareto-logy"].forEach(function (id) { document.getElementById(id).addEventListener("change", function () { if (state) render(); }); });
  if (state) render(); else reload();

})();
