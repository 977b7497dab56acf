/* autoft report: draw the plotly figures, sort the leaderboard, copy the best config. */
(function () {
  "use strict";

  function drawPlots() {
    if (typeof Plotly === "undefined") {
      document.querySelectorAll(".plot").forEach(function (el) {
        el.textContent = "plotly.js did not load: plots are unavailable.";
      });
      return;
    }
    document.querySelectorAll(".plot[data-figure]").forEach(function (el) {
      var spec = JSON.parse(document.getElementById(el.dataset.figure).textContent);
      Plotly.newPlot(el, spec.data, spec.layout || {}, { responsive: true, displaylogo: false });
    });
  }

  function sortKey(cell, type) {
    var v = cell.getAttribute("data-v");
    if (v === null) v = cell.textContent.trim();
    if (v === "") return null; // n/a and '-' sort last either way
    if (type === "str") return v.toLowerCase();
    var f = Number(v);
    if (type === "num" || (type === "auto" && !isNaN(f))) return isNaN(f) ? null : f;
    return v.toLowerCase();
  }

  function makeSortable(table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("sorted-asc");
        heads.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        var type = th.getAttribute("data-type") || "auto";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = sortKey(a.cells[col], type), y = sortKey(b.cells[col], type);
          if (x === null && y === null) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function copyConfig() {
    var button = document.getElementById("copy-config");
    var pre = document.getElementById("best-config-yaml");
    if (!button || !pre) return;
    button.addEventListener("click", function () {
      var done = function () { button.textContent = "copied"; setTimeout(function () { button.textContent = "copy"; }, 1500); };
      var fallback = function () {
        var range = document.createRange();
        range.selectNodeContents(pre);
        var sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        button.textContent = "selected: Ctrl-C";
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(pre.textContent).then(done, fallback);
      } else {
        fallback();
      }
    });
  }

  function keepScroll() {
    // The live view reloads itself: come back to the same place.
    if (!document.body.hasAttribute("data-live")) return;
    try {
      var y = sessionStorage.getItem("autoft-scroll");
      if (y !== null) window.scrollTo(0, Number(y));
      window.addEventListener("beforeunload", function () {
        sessionStorage.setItem("autoft-scroll", String(window.scrollY));
      });
    } catch (e) { /* storage disabled: no scroll memory */ }
  }

  function init() {
    document.querySelectorAll("table.sortable").forEach(makeSortable);
    copyConfig();
    drawPlots();
    keepScroll();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
