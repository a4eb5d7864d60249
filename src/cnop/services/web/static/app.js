// CNOP web app: progressive enhancement only. Pages work without this file; with it, prices and
// order statuses update live, the order ticket shows only the fields its type uses, and htmx
// requests carry the CSRF token. Amounts arrive as decimal strings and are formatted as strings:
// no money ever goes through a JavaScript number.
(function () {
  "use strict";

  var csrf = document.querySelector('meta[name="csrf-token"]');
  document.body.addEventListener("htmx:configRequest", function (event) {
    if (csrf) { event.detail.headers["X-CSRF-Token"] = csrf.content; }
  });

  // --- exact decimal strings -------------------------------------------------------------
  function increment(digits) {
    var out = digits.split(""), i = out.length - 1;
    while (i >= 0) {
      if (out[i] === "9") { out[i] = "0"; i -= 1; } else { out[i] = String(Number(out[i]) + 1); return out.join(""); }
    }
    return "1" + out.join("");
  }

  // Round a decimal string to `places` digits after the point, half to even (as the server does).
  function roundDecimal(text, places) {
    var m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(text).trim());
    if (!m) { return null; }
    var sign = m[1], whole = m[2], frac = m[3] || "";
    if (frac.length <= places) { frac = frac + "0".repeat(places - frac.length); }
    else {
      var kept = frac.slice(0, places), rest = frac.slice(places);
      var last = (whole + kept).slice(-1);
      var up = rest[0] > "5" || (rest[0] === "5" && (/[1-9]/.test(rest.slice(1)) || Number(last) % 2 === 1));
      var all = whole + kept;
      if (up) { all = increment(all); }
      whole = all.slice(0, all.length - places) || "0";
      frac = places ? all.slice(all.length - places) : "";
    }
    whole = whole.replace(/^0+(?=\d)/, "");
    var zero = /^0*$/.test(whole + frac);
    return { sign: zero ? "" : sign, whole: whole, frac: frac };
  }

  function group(whole) { return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ","); }

  function pricePlaces(text) {
    var m = /^-?(\d+)(?:\.(\d*?)0*)?$/.exec(String(text).trim());
    if (!m) { return 2; }
    if (m[1].replace(/^0+/, "") !== "") { return 2; }
    var needed = (m[2] || "").length;
    return Math.min(8, Math.max(4, needed));
  }

  function formatPrice(text) {
    var r = roundDecimal(text, pricePlaces(text));
    if (!r) { return String(text); }
    return (r.sign ? "\u2212" : "") + "$" + group(r.whole) + (r.frac ? "." + r.frac : "");
  }
  window.cnopFormatPrice = formatPrice;

  // --- live prices -----------------------------------------------------------------------
  function onTick(data) {
    var cells = document.querySelectorAll('[data-price="' + data.asset_id + '"]');
    var shown = formatPrice(data.price);
    for (var i = 0; i < cells.length; i += 1) {
      if (cells[i].textContent !== shown) { cells[i].textContent = shown; }
    }
    document.dispatchEvent(new CustomEvent("cnop:tick", { detail: data }));
  }

  function stream(url, handlers) {
    var source = null, retryMs = 2000;
    function open() {
      source = new EventSource(url);
      Object.keys(handlers).forEach(function (name) {
        source.addEventListener(name, function (event) {
          retryMs = 2000;
          try { handlers[name](JSON.parse(event.data), event); } catch (err) { /* a bad event is skipped */ }
        });
      });
      source.onerror = function () {
        // EventSource reconnects by itself (sending Last-Event-ID); if the server refused the
        // stream it stops, and we open a new one after a pause.
        if (source.readyState === EventSource.CLOSED) {
          setTimeout(open, retryMs);
          retryMs = Math.min(retryMs * 2, 30000);
        }
      };
    }
    open();
    window.addEventListener("pagehide", function () { if (source) { source.close(); } });
  }

  var assets = document.body.getAttribute("data-price-stream");
  if (assets) {
    stream("/api/v1/prices/stream?assets=" + encodeURIComponent(assets), { "price.tick": onTick });
  }

  // --- live orders -----------------------------------------------------------------------
  var toast = document.getElementById("live-region");
  var toastTimer = null;
  function say(text) {
    if (!toast) { return; }
    toast.textContent = text;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { toast.textContent = ""; }, 6000);
  }

  function onOrder(order, event) {
    var status = event.type.replace("order.", "");
    var rows = document.querySelectorAll('[data-order="' + order.order_id + '"] [data-status]');
    for (var i = 0; i < rows.length; i += 1) {
      rows[i].textContent = status.charAt(0).toUpperCase() + status.slice(1);
      rows[i].className = "badge badge-" + status;
    }
    say("Order " + order.asset_id + " " + String(order.order_type).replace(/_/g, " ") + ": " + status);
    document.body.dispatchEvent(new CustomEvent("orders-changed"));
  }

  var userStream = document.body.getAttribute("data-user-stream");
  if (userStream) {
    var handlers = { "price.tick": onTick };
    ["order.queued", "order.completed", "order.cancelled", "order.expired", "order.failed"].forEach(function (name) {
      handlers[name] = onOrder;
    });
    stream(userStream, handlers);
  }

  // --- the order ticket ------------------------------------------------------------------
  var ticket = document.getElementById("ticket");
  if (ticket) {
    var kind = ticket.querySelector('[name="kind"]');
    var tif = ticket.querySelector('[name="time_in_force"]');
    var sync = function () {
      ticket.querySelectorAll("[data-for-kinds]").forEach(function (el) {
        el.hidden = el.getAttribute("data-for-kinds").split(" ").indexOf(kind.value) < 0;
      });
      ticket.querySelectorAll("[data-for-tif]").forEach(function (el) {
        el.hidden = el.getAttribute("data-for-tif") !== tif.value;
      });
      var priceLabel = ticket.querySelector('label[for="f-price"]');
      if (priceLabel) { priceLabel.textContent = kind.value === "market" ? "Price bound (USD, optional)" : "Limit price (USD)"; }
    };
    kind.addEventListener("change", sync);
    tif.addEventListener("change", sync);
    sync();
  }
})();
