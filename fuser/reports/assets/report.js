// fuser report: interaction on top of a page that already works without JavaScript.
// Pointing at an op or a group frame highlights the group's ops and shows its card;
// following a #group-K link (a click on the graph) highlights that group too.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var dag = document.querySelector(".dag");
  var card = document.getElementById("card");

  function groupOf(el) {
    for (; el && el !== document; el = el.parentNode) {
      var cls = el.getAttribute && el.getAttribute("class");
      if (cls) {
        var m = / g(\d+)(\s|$)/.exec(" " + cls);
        if (m && /\b(op|frame)\b/.test(cls)) return m[1];
      }
    }
    return null;
  }

  function highlight(k) {
    if (!dag) return;
    dag.querySelectorAll(".hl").forEach(function (e) { e.classList.remove("hl"); });
    if (k === null) { dag.classList.remove("dim"); return; }
    var ops = dag.querySelectorAll(".op.g" + k);
    ops.forEach(function (e) { e.classList.add("hl"); });
    dag.classList.toggle("dim", ops.length > 0);
  }

  function showCard(k, x, y) {
    var source = k === null ? null : document.querySelector("#group-" + k + " .card");
    if (!source) { card.hidden = true; return; }
    card.innerHTML = source.innerHTML;
    card.setAttribute("data-group", k);
    card.hidden = false;
    var w = card.offsetWidth, h = card.offsetHeight;
    card.style.left = Math.min(x + 16, window.innerWidth - w - 8) + "px";
    card.style.top = Math.min(y + 12, window.innerHeight - h - 8) + "px";
  }

  if (dag) {
    dag.addEventListener("mousemove", function (ev) {
      var k = groupOf(ev.target);
      highlight(k);
      showCard(k, ev.clientX, ev.clientY);
    });
    dag.addEventListener("mouseleave", function () { highlight(selected()); card.hidden = true; });
  }

  function selected() {
    var m = /^#group-(\d+)$/.exec(location.hash);
    return m ? m[1] : null;
  }

  function onHash() {
    var k = selected();
    highlight(k);
    document.body.setAttribute("data-selected", k === null ? "" : k);
    var first = k === null || !dag ? null : dag.querySelector(".op.g" + k);
    var pane = document.querySelector(".graph-pane");
    if (first && pane) {  // bring the group into the graph pane's view, leave the page where the link put it
      var r = first.getBoundingClientRect(), p = pane.getBoundingClientRect();
      pane.scrollTop += r.top - p.top - p.height / 3;
      pane.scrollLeft += r.left - p.left - p.width / 3;
    }
  }
  window.addEventListener("hashchange", onHash);
  onHash();

  var zoom = document.querySelector("button.zoom");
  if (zoom && dag) {
    zoom.addEventListener("click", function () {
      var actual = dag.classList.toggle("actual");
      zoom.textContent = actual ? "fit to pane" : "actual size";
    });
  }

  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var text = document.getElementById(b.getAttribute("data-copy")).textContent;
      if (navigator.clipboard) navigator.clipboard.writeText(text);
      b.textContent = "copied";
    });
  });
})();
