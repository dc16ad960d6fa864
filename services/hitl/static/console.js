// Switchboard reviewer console: refreshes the parts of a page marked data-refresh (the inbox
// list, a review's state) in place, every data-refresh-s seconds of <body>. A part with the
// focus inside it is left alone, and forms are never inside one, so nothing a reviewer is
// typing, or the place they have reached with the keyboard, is lost. Works without it: every
// page is complete as served.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh-s"));
  if (!(seconds > 0)) return;
  var shown = new WeakMap();  // part -> the fragment last put in it

  function refresh(part) {
    if (part.contains(document.activeElement)) return;
    fetch(part.getAttribute("data-refresh"), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected) {  // signed out or token revoked: show the sign-in page
          window.location.assign(response.url);
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null || html === shown.get(part)) return;
        if (part.contains(document.activeElement)) return;
        shown.set(part, html);
        part.innerHTML = html;
      })
      .catch(function () { /* the service is restarting: try again next time */ });
  }

  window.setInterval(function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  }, seconds * 1000);
})();
