// The asset page's live price chart (lightweight-charts). Chart coordinates are numbers by
// necessity; the prices shown as text elsewhere stay exact strings.
(function () {
  "use strict";
  var box = document.getElementById("chart");
  if (!box || !window.LightweightCharts) { return; }
  var LC = window.LightweightCharts;
  var asset = box.getAttribute("data-asset");
  var ranges = { "1h": { seconds: 3600, interval: "1m" }, "24h": { seconds: 86400, interval: "5m" }, "30d": { seconds: 2592000, interval: "1h" } };
  var chart = LC.createChart(box, {
    autoSize: true,
    layout: { background: { color: "#ffffff" }, textColor: "#1f2328", attributionLogo: false },
    grid: { vertLines: { color: "#eaeef2" }, horzLines: { color: "#eaeef2" } },
    timeScale: { timeVisible: true, secondsVisible: false },
    rightPriceScale: { borderColor: "#d0d7de" },
  });
  var series = chart.addSeries(LC.LineSeries, { color: "#0550ae", lineWidth: 2, priceFormat: { type: "price", precision: 2, minMove: 0.01 } });
  var lastTime = 0;

  function point(p) { return { time: Math.floor(Date.parse(p.time) / 1000), value: Number(p.price) }; }

  function load(name) {
    var range = ranges[name];
    var since = new Date(Date.now() - range.seconds * 1000).toISOString();
    var url = "/api/v1/inventory/assets/" + encodeURIComponent(asset) + "/prices?interval=" + range.interval + "&since=" + encodeURIComponent(since);
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (body) {
      var seen = {}, data = [];
      body.data.prices.forEach(function (p) {
        var pt = point(p);
        if (seen[pt.time] !== undefined) { data[seen[pt.time]] = pt; } else { seen[pt.time] = data.length; data.push(pt); }
      });
      if (data.length && Number(data[data.length - 1].value) < 1) {
        series.applyOptions({ priceFormat: { type: "price", precision: 6, minMove: 0.000001 } });
      }
      series.setData(data);
      lastTime = data.length ? data[data.length - 1].time : 0;
      chart.timeScale().fitContent();
      box.setAttribute("data-points", String(data.length));
    });
    document.querySelectorAll("[data-range]").forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-range") === name ? "true" : "false");
    });
  }

  document.querySelectorAll("[data-range]").forEach(function (b) {
    b.addEventListener("click", function () { load(b.getAttribute("data-range")); });
  });
  document.addEventListener("cnop:tick", function (event) {
    if (event.detail.asset_id !== asset) { return; }
    var pt = point(event.detail);
    if (pt.time < lastTime) { return; }
    lastTime = pt.time;
    series.update(pt);
  });
  load("1h");
})();
