(function () {
  "use strict";
  var list = document.getElementById("samples-list");
  var filter = document.getElementById("sample-filter");
  var sortKey = document.getElementById("sample-sort");
  var sortDir = document.getElementById("sample-dir");
  var count = document.getElementById("sample-count");
  if (!list || !filter || !sortKey || !sortDir || !count) { return; }
  var cards = Array.prototype.slice.call(list.querySelectorAll("article.sample"));
  function num(card, key) {
    var value = parseFloat(card.getAttribute("data-" + key));
    return isFinite(value) ? value : null;
  }
  function applyFilter() {
    var terms = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    cards.forEach(function (card) {
      var text = card.getAttribute("data-search") || "";
      var match = terms.every(function (term) { return text.indexOf(term) !== -1; });
      card.hidden = !match;
      if (match) { shown += 1; }
    });
    count.textContent = "showing " + shown + " of " + cards.length + " samples";
  }
  function compare(a, b) {
    var key = sortKey.value;
    var order = num(a, "index") - num(b, "index");
    if (key === "index") { return order; }
    var x = num(a, key), y = num(b, key);
    if (x === null || y === null) { return x === y ? order : (x === null ? 1 : -1); }
    if (x !== y) { return (sortDir.value === "asc" ? 1 : -1) * (x - y); }
    return order;
  }
  function applySort() {
    cards.slice().sort(compare).forEach(function (card) { list.appendChild(card); });
  }
  filter.addEventListener("input", applyFilter);
  sortKey.addEventListener("change", applySort);
  sortDir.addEventListener("change", applySort);
  applyFilter();
})();
