// Gateway index: jump straight to /rooms/<name>/ instead of the ?room= redirect.
"use strict";

(() => {
  const form = document.getElementById("enter");
  if (!form) return;
  const input = form.elements.namedItem("room");

  form.addEventListener("submit", (event) => {
    const name = input.value.trim();
    if (!name) return; // let the browser's validation speak
    event.preventDefault();
    // Resolve relative to the index URL so the gateway also works under a prefix.
    const target = new URL(`rooms/${encodeURIComponent(name)}/`, form.action);
    location.assign(target.href);
  });
})();
