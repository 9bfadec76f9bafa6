// Keyboard shortcuts and in-place unblur for the review queue.  Every page works without this file.
(function () {
  "use strict";

  function typing(ev) {
    var t = ev.target;
    return ev.ctrlKey || ev.metaKey || ev.altKey ||
      (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(t.tagName) && t.type !== "submit"));
  }

  function items() {
    var links = document.querySelectorAll("table.queue a.case");
    if (links.length) { return Array.prototype.slice.call(links); }
    return Array.prototype.slice.call(document.querySelectorAll("a.unblur"));
  }

  function move(step) {
    var list = items();
    if (!list.length) { return; }
    var at = list.indexOf(document.activeElement);
    var next = list[Math.max(0, Math.min(list.length - 1, at < 0 ? 0 : at + step))];
    next.focus();
    var row = next.closest("tr, article");
    if (row) { row.scrollIntoView({block: "nearest"}); }
  }

  function toggle(link) {
    var fig = link.closest("figure");
    var img = fig && fig.querySelector("img");
    if (!img) { return; }
    var clear = img.getAttribute("data-mode") !== "clear";
    var mode = clear ? "clear" : "blur";
    img.setAttribute("data-mode", mode);
    img.src = fig.getAttribute("data-src") + "?mode=" + mode;
    img.alt = img.alt.replace(/^(Unblurred|Blurred greyscale)/, clear ? "Unblurred" : "Blurred greyscale");
    fig.classList.toggle("clear", clear);
    fig.classList.toggle("blur", !clear);
    link.textContent = clear ? "Blur again" : "Unblur";
    link.setAttribute("aria-pressed", clear ? "true" : "false");
    var hint = fig.querySelector("figcaption .small");
    if (hint) { hint.textContent = clear ? "Shown unblurred" : "Blurred and greyscale"; }
  }

  document.addEventListener("click", function (ev) {
    var link = ev.target.closest && ev.target.closest("a[data-preview]");
    if (link) { ev.preventDefault(); toggle(link); return; }
    var btn = ev.target.closest && ev.target.closest("section.decide button[value=confirm]");
    if (btn && !window.confirm("Take down every upload of this file on the wiki now?")) { ev.preventDefault(); }
  });

  document.addEventListener("keydown", function (ev) {
    if (typing(ev)) { return; }
    var k = ev.key;
    if (k === "j") { move(1); }
    else if (k === "k") { move(-1); }
    else if (k === "u") {
      var focused = document.activeElement && document.activeElement.closest &&
        document.activeElement.closest("article.upload");
      var link = (focused || document).querySelector("a[data-preview]");
      if (link) { toggle(link); link.focus(); }
    }
    else if (k === "n") { var note = document.getElementById("note"); if (note) { note.focus(); } }
    else if (k === "/") {
      var box = document.querySelector("form.filters input[type=search], form.filters select");
      if (box) { box.focus(); }
    }
    else if (k === "g") { window.location.href = "/review/"; }
    else { return; }
    ev.preventDefault();
  });
}());
