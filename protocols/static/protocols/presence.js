// Gateway room: who is here, people (browsers) and devices.
import { el, timeEl } from "./dom.js";

const KINDS = { browser: "person", device: "device" };

export class PresenceList {
  constructor(list, counter = null) {
    this.list = list;
    this.counter = counter;
    this.listed = true; // the list shown is the whole room (false: a big room, the count alone)
    this.total = 0;
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

  /** The whole list (members), or only how many are here (members null: a big room). */
  reset(members, total = null) {
    this.list.replaceChildren();
    this.listed = Array.isArray(members);
    this.list.dataset.listed = String(this.listed);
    for (const member of this.listed ? members : []) {
      if (member && typeof member === "object" && !this.find(member.key)) this.insert(this.item(member));
    }
    this.total = Number.isInteger(total) ? total : this.list.childElementCount;
    this.count();
  }

  /** A presence frame: changes, the whole list, or the count alone. */
  update(frame) {
    if (Array.isArray(frame.members)) {
      this.reset(frame.members, frame.count);
      return;
    }
    if (!Array.isArray(frame.joined) && !Array.isArray(frame.left)) {
      // Too many to list: the count alone (pages already asked for stay shown).
      if (this.listed) this.reset(null, frame.count);
      else if (Number.isInteger(frame.count)) this.total = frame.count;
      this.count();
      return;
    }
    if (this.listed) {
      for (const member of Array.isArray(frame.left) ? frame.left : []) this.leave(member, false);
      for (const member of Array.isArray(frame.joined) ? frame.joined : []) this.join(member, false);
    }
    if (Number.isInteger(frame.count)) this.total = frame.count;
    this.count();
  }

  /** A page of the member list asked for (a big room): added to what is shown. */
  page(members) {
    for (const member of Array.isArray(members) ? members : []) {
      if (member && typeof member === "object" && !this.find(member.key)) this.insert(this.item(member));
    }
  }

  join(member, recount = true) {
    if (!member || typeof member !== "object") return;
    this.find(member.key)?.remove();
    this.insert(this.item(member));
    if (recount) this.count();
  }

  leave(member, recount = true) {
    if (!member || typeof member !== "object") return;
    this.find(member.key)?.remove();
    if (recount) this.count();
  }

  count() {
    if (!this.counter) return;
    if (!this.listed) {
      this.counter.textContent = `${this.total ?? 0} here`;
      return;
    }
    const people = this.list.querySelectorAll('[data-kind="browser"]').length;
    const devices = this.list.childElementCount - people;
    const parts = [];
    if (people) parts.push(`${people} ${people === 1 ? "person" : "people"}`);
    if (devices) parts.push(`${devices} ${devices === 1 ? "device" : "devices"}`);
    this.counter.textContent = parts.join(", ");
  }
}
