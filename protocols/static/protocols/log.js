// Gateway room: the chat log. One <li> per message, each id shown once, at most `max` entries.
import { el, messageText, timeEl } from "./dom.js";

const SOURCES = { ws: "browser", mqtt: "device", http: "api" };

export class Log {
  constructor(list, { max = 500, remember = 5000, jump = null } = {}) {
    this.list = list;
    this.max = max;
    this.remember = remember;
    this.jump = jump;
    this.ids = new Set();
    this.count = 0;
    this.pinned = true; // the reader is at the bottom: follow new messages
    this.stick = null; // pinned when the current batch of appends began?
    list.addEventListener("scroll", () => {
      this.pinned = this.atBottom();
      if (this.pinned && this.jump) this.jump.hidden = true;
    }, { passive: true });
    // A resized log (rotation, window size) stays at the bottom if it was there.
    new ResizeObserver(() => this.pinned && this.toBottom()).observe(list);
    jump?.addEventListener("click", () => this.toBottom());
  }

  /** Messages shown since the page loaded (each id once). */
  get shown() {
    return this.count;
  }

  has(id) {
    return this.ids.has(id);
  }

  atBottom() {
    const { scrollHeight, scrollTop, clientHeight } = this.list;
    return scrollHeight - scrollTop - clientHeight < 24;
  }

  toBottom() {
    this.list.scrollTop = this.list.scrollHeight;
    this.pinned = true;
    if (this.jump) this.jump.hidden = true;
  }

  /** Show a message frame; false when its id was shown already. */
  message(frame) {
    const id = frame.id == null ? null : String(frame.id);
    if (id !== null) {
      if (this.ids.has(id)) return false;
      this.ids.add(id);
      if (this.ids.size > this.remember) this.ids.delete(this.ids.values().next().value);
    }
    const source = String(frame.source ?? "");
    const li = el("li", "message");
    if (id !== null) li.dataset.id = id;
    if (frame.seq != null) li.dataset.seq = String(frame.seq);
    li.dataset.source = source;
    const byTopic = frame.sender == null;
    const sender = el("span", byTopic ? "sender topic" : "sender", (byTopic ? frame.topic : frame.sender) ?? "");
    if (frame.topic) sender.title = frame.topic;
    li.append(
      timeEl(frame.ts),
      el("span", `badge badge-${SOURCES[source] ? source : "other"}`, SOURCES[source] ?? (source || "?")),
      sender,
      this.text(frame),
    );
    this.count += 1;
    this.append(li);
    return true;
  }

  text(frame) {
    const node = el("span", "text", messageText(frame));
    if (frame.encoding === "base64") node.classList.add("binary");
    else if (typeof frame.message !== "string") node.classList.add("json");
    return node;
  }

  /** An error frame from the gateway. */
  error(frame) {
    const li = el("li", "error");
    const code = String(frame.code ?? "error");
    li.dataset.code = code;
    if (frame.id != null) li.dataset.for = String(frame.id);
    li.append(timeEl(), el("span", "code", code), el("span", "text", String(frame.detail ?? "")));
    this.append(li);
  }

  /** The welcome said history no longer reaches back to what we saw last. */
  gap() {
    const li = el("li", "gap");
    li.append(timeEl(), el("span", "text", "Some earlier messages are no longer available"));
    this.append(li);
  }

  /** A note from this page (connection refused, …); `extra` is an optional node. */
  notice(text, className = "notice", extra = null) {
    const li = el("li", className);
    li.append(timeEl(), el("span", "text", text));
    if (extra) li.append(" ", extra);
    this.append(li);
  }

  append(li) {
    if (this.stick === null) {
      // Decide once per batch (a welcome may bring hundreds): measure before, settle after.
      this.stick = this.pinned;
      queueMicrotask(() => this.settle());
    }
    this.list.append(li);
  }

  settle() {
    const { list } = this;
    const excess = list.childElementCount - this.max;
    if (excess > 0) {
      const keep = list.children[excess];
      const before = keep.offsetTop;
      for (let i = 0; i < excess; i += 1) list.firstElementChild.remove();
      if (!this.stick) list.scrollTop -= before - keep.offsetTop; // the reader's place stays put
    }
    if (this.stick) list.scrollTop = list.scrollHeight;
    else if (this.jump) this.jump.hidden = false;
    this.stick = null;
  }
}
