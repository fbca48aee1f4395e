// Gateway index: enter a room by name, and keep the room list's live counts fresh.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const form = document.getElementById("enter");
  const list = document.getElementById("rooms");
  const stale = document.getElementById("rooms-stale");
  // Room pages live beside the index ("rooms/<name>/"), so a prefix in front of the gateway works.
  const base = form ? form.action : new URL("/", location.href).href;

  const roomHref = (name) => new URL(`rooms/${encodeURIComponent(name)}/`, base).pathname;

  if (form) {
    const input = form.elements.namedItem("room");
    form.addEventListener("submit", (event) => {
      const name = input.value.trim();
      if (!name) return; // let the browser's validation speak
      event.preventDefault();
      location.assign(roomHref(name));
    });
  }

  if (!list) return;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function count(span, value, one, many) {
    if (typeof value === "number" && Number.isFinite(value)) {
      span.dataset.count = String(value);
      span.textContent = many ? `${value} ${value === 1 ? one : many}` : `${value} ${one}`;
    } else {
      delete span.dataset.count;
      span.textContent = "";
    }
  }

  function roomItem(name) {
    const li = el("li");
    li.dataset.room = name;
    const link = el("a", "name", name);
    link.href = roomHref(name);
    const counts = el("span", "counts");
    counts.append(el("span", "people"), el("span", "devices"), el("span", "rate"));
    li.append(link, counts);
    return li;
  }

  function fill(li, room) {
    count(li.querySelector(".people"), room.people, "person", "people");
    count(li.querySelector(".devices"), room.devices, "device", "devices");
    count(li.querySelector(".rate"), room.messages_per_minute, "msg/min");
  }

  function render(rooms) {
    const existing = new Map();
    for (const li of list.querySelectorAll(":scope > li[data-room]")) existing.set(li.dataset.room, li);
    const items = [];
    for (const room of rooms) {
      if (!room || typeof room.name !== "string" || !room.name) continue;
      const li = existing.get(room.name) ?? roomItem(room.name);
      existing.delete(room.name);
      fill(li, room);
      items.push(li);
    }
    if (items.length === 0) items.push(el("li", "empty", "No rooms yet"));
    // Re-attaching in order keeps focus and hover on rows that stay.
    list.querySelectorAll(":scope > li.empty").forEach((li) => li !== items[0] && li.remove());
    existing.forEach((li) => li.remove());
    items.forEach((li, i) => {
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] ?? null);
    });
  }

  let timer = null;
  let controller = null;

  async function refresh() {
    clearTimeout(timer);
    controller?.abort();
    controller = new AbortController();
    try {
      const response = await fetch(list.dataset.api, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      if (!data || !Array.isArray(data.rooms)) throw new Error("unexpected answer");
      render(data.rooms);
      list.dataset.state = "live";
      if (stale) stale.hidden = true;
    } catch (error) {
      if (error?.name === "AbortError") return;
      list.dataset.state = "stale";
      if (stale) stale.hidden = false;
    }
    if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) clearTimeout(timer);
    else refresh();
  });

  refresh();
})();
