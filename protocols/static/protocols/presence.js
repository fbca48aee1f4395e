// Gateway room: who is here, people (browsers) and devices.
import { el, timeEl } from "./dom.js";

const KINDS = { browser: "person", device: "device" };

export class PresenceList {
  constructor(list, counter = null) {
    this.list = list;
    this.counter = counter;
  }

  item(member) {
    const kind = String(member.kind ?? "");
    const li = el("li");
    li.dataset.key = String(member.key ?? "");
    li.dataset.kind = kind;
    if (kind === "device") li.dataset.verified = String(member.verified === true);
    const marker = el("span", `kind kind-${KINDS[kind] ?? "other"}`, KINDS[kind] ?? (kind || "?"));
    li.append(marker, el("span", "name", member.name ?? member.key ?? ""));
    if (kind === "device") li.append(PresenceList.identity(member.verified === true));
    if (member.since) {
      const since = timeEl(member.since);
      li.title = `here since ${since.textContent}`;
    }
    return li;
  }

  /** A device's identity mark: a check for a registered device, "unverified" otherwise. */
  static identity(verified) {
    const mark = verified
      ? el("span", "identity verified", "\u2713")
      : el("span", "identity unverified", "unverified");
    mark.title = verified ? "verified device" : "unverified device";
    mark.setAttribute("aria-label", mark.title);
    return mark;
  }

  static order(li) {
    return `${li.dataset.kind === "browser" ? 0 : 1}\u0000${li.querySelector(".name").textContent.toLowerCase()}`;
  }

  /** Insert keeping people first, then devices, each by name. */
  insert(li) {
    const key = PresenceList.order(li);
    const next = [...this.list.children].find((other) => PresenceList.order(other) > key);
    this.list.insertBefore(li, next ?? null);
  }

  find(key) {
    return [...this.list.children].find((li) => li.dataset.key === String(key)) ?? null;
  }

  reset(members) {
    this.list.replaceChildren();
    for (const member of members ?? []) if (member && !this.find(member.key)) this.insert(this.item(member));
    this.count();
  }

  join(member) {
    if (!member) return;
    this.find(member.key)?.remove();
    this.insert(this.item(member));
    this.count();
  }

  leave(member) {
    if (!member) return;
    this.find(member.key)?.remove();
    this.count();
  }

  count() {
    if (!this.counter) return;
    const people = this.list.querySelectorAll('[data-kind="browser"]').length;
    const devices = this.list.childElementCount - people;
    const parts = [];
    if (people) parts.push(`${people} ${people === 1 ? "person" : "people"}`);
    if (devices) parts.push(`${devices} ${devices === 1 ? "device" : "devices"}`);
    this.counter.textContent = parts.join(", ");
  }
}
