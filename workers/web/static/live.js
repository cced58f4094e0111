// Live updates without a reload: the server sends an event when jobs change (live.py);
// the page asks for its own content again (X-Fragment: 1) and swaps it in, keeping the
// boxes ticked. Written here, served by the app: nothing is fetched from a CDN.
(function () {
  "use strict";
  var body = document.body;
  if (!body.dataset.live || !window.EventSource) return;
  var base = body.dataset.base || "";
  var state = document.getElementById("live-state");
  var busy = false, again = false;

  function ticked() {
    var ids = {};
    document.querySelectorAll("input[name=ids]:checked").forEach(function (box) { ids[box.value] = true; });
    return ids;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var keep = ticked();
    fetch(window.location.href, { headers: { "X-Fragment": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var main = document.getElementById("live");
        if (document.activeElement && main.contains(document.activeElement) &&
            document.activeElement.tagName !== "BUTTON") return;  // not while someone types
        main.innerHTML = html;
        document.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = !!keep[box.value]; });
        body.dataset.refreshed = String(Date.now());
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }

  // A browser keeps six connections per server: close the stream when the page goes (or
  // into the back-forward cache) so that pages left behind do not hold them.
  var source = null;
  function follow() {
    source = new EventSource(base + "/events");
    source.addEventListener("change", refresh);
    source.addEventListener("tick", refresh);
    source.onopen = function () { if (state) state.textContent = "live"; };
    source.onerror = function () { if (state) state.textContent = "reconnecting…"; };
  }
  window.addEventListener("pagehide", function () { if (source) { source.close(); source = null; } });
  window.addEventListener("pageshow", function (event) { if (event.persisted) { follow(); refresh(); } });
  follow();
})();
