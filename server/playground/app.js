/* easel playground: plain JavaScript, no framework, no build step, nothing loaded from elsewhere.
 *
 * The page is a client like any other: Runware tasks go over the WebSocket at /v1, PICPIK
 * actions are signed POSTs to /, the engine panel reads GET /engine/events. Everything the
 * server or the user wrote (prompts, error messages) is put into the page as text, never as
 * HTML.
 */
"use strict";

// ---------------------------------------------------------------- settings (data, not code)

// Sampler names the server accepts (pipelines/samplers.py); "Default" is the model's own.
const SCHEDULERS = [
  "Default", "Euler", "Euler a", "Euler Karras", "Heun", "LMS", "LMS Karras", "DPM2",
  "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE",
  "DPM++ 2M SDE Karras", "DPM++ SDE", "DPM++ SDE Karras", "DDIM", "PLMS", "UniPC", "DEIS",
  "DDPM", "LCM",
];
// What each action shows: the label of its image input (none: no image), extra sections.
const ACTIONS = {
  txt2img: { label: "Text to image" },
  img2img: { label: "Image to image", image: "Source image", strength: true },
  inpaint: { label: "Inpaint", image: "Image to repaint", strength: true, mask: true },
  controlnet: { label: "ControlNet", image: "Control image", section: "controlnet-section" },
  style: { label: "Style reference", image: "Style image", section: "style-section" },
  background: { label: "Background", image: "Foreground (PNG with transparency)" },
};
// Runware's preProcessorType names: used when the PICPIK preprocessor list cannot be read.
const FALLBACK_PREPROCESSORS = ["canny", "depth", "mlsd", "normalbae", "openpose", "lineart",
  "lineart_anime", "shuffle", "scribble", "softedge"];
const PING_INTERVAL_MS = 20000; // the server closes sockets idle for 120 s
const SILENCE_POLL_MS = 3000; // no word on a running task for this long: ask with getResponse
const PICPIK_POLL_MS = 500;
const ENGINE_RETRY_MS = 10000;
const GALLERY_SIZE = 50;
const TASK_CARDS = 30;
const STORAGE = { keys: "easel.playground.keys", form: "easel.playground.form",
  gallery: "easel.playground.gallery" };
// Form fields remembered between visits (not the image: it can be large).
const REMEMBERED = ["action", "model", "prompt", "negative", "width", "height", "steps", "cfg",
  "seed", "count", "scheduler", "strength", "controlnet-model", "preprocessor",
  "controlnet-weight", "ip-adapter", "style-weight"];

// ---------------------------------------------------------------- small helpers

const $ = (id) => document.getElementById(id);

/** An element from a tag, properties and children; text children stay text. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** A random UUID v4. crypto.randomUUID exists only in secure contexts, and the page may be
 * served over plain http on a LAN address; getRandomValues works everywhere. */
function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function loadJSON(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function saveJSON(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or disabled: the page works without it
  }
}

/** A URL relative to the page, so the page also works behind a proxy under a sub-path. */
const apiURL = (path) => new URL(path, document.baseURI);

const keys = () => ({
  runware: $("runware-key").value,
  picpikPublic: $("picpik-public").value,
  picpikPrivate: $("picpik-private").value,
});

// ---------------------------------------------------------------- PICPIK signatures

/** SHA-1 hex digest of a text's UTF-8 bytes. crypto.subtle is missing outside secure
 * contexts, hence this small pure-JS version. */
function sha1Hex(text) {
  const bytes = new TextEncoder().encode(text);
  const padded = new Uint8Array((((bytes.length + 8) >> 6) + 1) << 6);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bytes.length / 0x20000000));
  view.setUint32(padded.length - 4, (bytes.length * 8) >>> 0);
  const h = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];
  const w = new Uint32Array(80);
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + 4 * i);
    for (let i = 16; i < 80; i++) {
      const x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
      w[i] = (x << 1) | (x >>> 31);
    }
    let [a, b, c, d, e] = h;
    for (let i = 0; i < 80; i++) {
      const [f, k] = i < 20 ? [(b & c) | (~b & d), 0x5a827999]
        : i < 40 ? [b ^ c ^ d, 0x6ed9eba1]
          : i < 60 ? [(b & c) | (b & d) | (c & d), 0x8f1bbcdc]
            : [b ^ c ^ d, 0xca62c1d6];
      const t = (((a << 5) | (a >>> 27)) + f + e + k + w[i]) >>> 0;
      [e, d, c, b, a] = [d, c, ((b << 30) | (b >>> 2)) >>> 0, a, t];
    }
    [a, b, c, d, e].forEach((v, i) => { h[i] = (h[i] + v) >>> 0; });
  }
  return h.map((v) => v.toString(16).padStart(8, "0")).join("");
}

/** Lone surrogates become U+FFFD, as the server's JSON reader and any UTF-8 encoder do. */
const wellFormed = (s) => (s.toWellFormed ? s.toWellFormed() : s);

/** Python's sort order for keys: by code point (JS compares UTF-16 units). */
function byCodePoint(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

/** Digits with an exponent ("1.5e-7") written out ("0.00000015"), as Python's Decimal "f". */
function plainDecimal(text) {
  const m = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!m) return text;
  const [, sign, whole, fraction = "", exponent] = m;
  const digits = whole + fraction;
  const point = whole.length + Number(exponent);
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** A number as server/picpik/signature.py renders what the server parsed from JSON.stringify:
 * integers below 1e21 arrive as Python ints, larger ones as floats written out in full, other
 * floats as their shortest form (the same digits in JS and Python) without an exponent. */
function renderNumber(n) {
  if (!Number.isFinite(n)) return ""; // JSON.stringify sends null
  if (Number.isInteger(n)) return Math.abs(n) < 1e21 ? String(n) : BigInt(n).toString();
  return plainDecimal(String(n));
}

/** The signing tool's rendering of a value (shared/protocols/picpik.md). */
function renderSigned(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return renderNumber(value);
  if (Array.isArray(value)) return value.map(renderSigned).join("");
  if (typeof value === "object") {
    const entries = Object.entries(value).map(([k, v]) => [wellFormed(k), v]);
    entries.sort(([a], [b]) => byCodePoint(a, b));
    return entries.map(([k, v]) => k + renderSigned(v)).join("");
  }
  return wellFormed(String(value));
}

/** The Signature of a request: SHA-1 of its rendering plus the private key. What is signed
 * is what the server will parse (JSON drops undefined fields, turns NaN into null). */
function signRequest(request, privateKey) {
  const sent = JSON.parse(JSON.stringify(request));
  delete sent.Signature;
  return sha1Hex(renderSigned(sent) + (privateKey || ""));
}

/** One PICPIK action; resolves with the reply, rejects with the server's Message. */
async function picpik(action, fields) {
  const { picpikPublic, picpikPrivate } = keys();
  // Any PublicKey works on an open server; a keyed one checks the pair.
  const request = { Action: action, PublicKey: picpikPublic || "playground", ...fields };
  request.Signature = signRequest(request, picpikPrivate);
  const response = await fetch(apiURL("./"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  const reply = await response.json().catch(() => null);
  if (reply === null) throw new Error(`the PICPIK endpoint answered HTTP ${response.status}`);
  if (reply.RetCode !== 0) {
    throw new Error(`${reply.Message || "failed"} (RetCode ${reply.RetCode})`);
  }
  return reply;
}

// ---------------------------------------------------------------- Runware WebSocket

/** The Runware socket: authenticates, keeps alive, reconnects (resuming its session, so results
 * that finished meanwhile come back), and routes each item to the task with its taskUUID. */
class RunwareSocket {
  constructor(onState, onReady) {
    this.onState = onState;
    this.onReady = onReady;
    // taskUUID -> {item, error, lost (one-shot requests) or async, running, heard}
    this.watchers = new Map();
    this.queue = []; // messages written while offline
    this.sessionId = null;
    this.retryMs = 500;
    this.socket = null;
    setInterval(() => this.sendIfOpen([{ taskType: "ping", ping: true }]), PING_INTERVAL_MS);
    setInterval(() => this.askSilentTasks(), 1000);
  }

  connect() {
    const url = apiURL("v1");
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    this.socket = socket;
    this.onState("connecting", "connecting…");
    socket.onopen = () => {
      this.authenticate();
      while (this.queue.length) socket.send(this.queue.shift());
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = () => this.closed(socket);
  }

  authenticate() {
    const auth = { taskType: "authentication", apiKey: keys().runware };
    if (this.sessionId) auth.connectionSessionUUID = this.sessionId;
    this.socket.send(JSON.stringify([auth]));
  }

  /** A new key: forget the old key's session and authenticate again. */
  changeKey() {
    this.sessionId = null;
    if (this.socket?.readyState === WebSocket.OPEN) this.authenticate();
  }

  closed(socket) {
    if (socket !== this.socket) return;
    this.onState("offline", "disconnected, reconnecting…");
    for (const watcher of this.watchers.values()) {
      if (watcher.lost) watcher.lost();
      // An async task may have ended meanwhile: ask for it once reconnected.
      else watcher.running = true;
    }
    setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 10000);
  }

  send(tasks) {
    if (!this.sendIfOpen(tasks)) this.queue.push(JSON.stringify(tasks));
  }

  sendIfOpen(tasks) {
    const open = this.socket?.readyState === WebSocket.OPEN;
    if (open) this.socket.send(JSON.stringify(tasks));
    return open;
  }

  watch(taskUUID, watcher) {
    this.watchers.set(taskUUID, { heard: Date.now(), ...watcher });
  }

  unwatch(taskUUID) {
    this.watchers.delete(taskUUID);
  }

  /** A one-shot task (modelSearch, preprocessing): its first item, or its error. */
  request(task) {
    return new Promise((resolve, reject) => {
      const settle = (fn, value) => { this.unwatch(task.taskUUID); fn(value); };
      this.watch(task.taskUUID, {
        item: (item) => settle(resolve, item),
        error: (error) => settle(reject, new Error(errorText(error))),
        lost: () => settle(reject, new Error("the connection was lost, try again")),
      });
      this.send([task]);
    });
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    for (const error of frame.errors || []) this.route(error, "error");
    for (const item of frame.data || []) this.route(item, "item");
  }

  route(item, kind) {
    if (item.taskType === "authentication") return this.authenticated(item, kind);
    if (item.taskType === "ping") return; // the pong of our keepalive
    const watcher = this.watchers.get(item.taskUUID);
    if (watcher) {
      watcher.heard = Date.now();
      // Acknowledged: from now on the server knows the task and getResponse may ask for it.
      if (watcher.async) watcher.running = true;
      watcher[kind](item);
    } else if (kind === "error" && !item.taskUUID) {
      this.onState("error", errorText(item));
    }
  }

  authenticated(item, kind) {
    if (kind === "error") {
      this.onState("error", `authentication failed: ${errorText(item)}`);
      $("keys-panel").open = this.openedKeys = true; // where to fix it
      return;
    }
    if (this.openedKeys) $("keys-panel").open = this.openedKeys = false; // fixed
    this.sessionId = item.connectionSessionUUID;
    this.retryMs = 500;
    this.onState("connected", "connected");
    this.onReady();
  }

  /** The server pushes the progress of async tasks; should a socket drop or the server not
   * push, getResponse asks for tasks not heard of for a while. */
  askSilentTasks() {
    const now = Date.now();
    const silent = [];
    for (const [taskUUID, watcher] of this.watchers) {
      if (watcher.running && now - watcher.heard > SILENCE_POLL_MS) {
        watcher.heard = now;
        silent.push({ taskType: "getResponse", taskUUID });
      }
    }
    if (silent.length) this.sendIfOpen(silent);
  }
}

/** A Runware error item as text: the server's message, and the parameter at fault. */
function errorText(error) {
  const where = error.parameter ? ` (${error.parameter})` : "";
  return `${error.message || error.code || "error"}${where}`;
}

// ---------------------------------------------------------------- task cards and gallery

/** A card in the task list: title, prompt, progress bar, state, result thumbnails. */
class TaskCard {
  constructor(title, prompt) {
    this.started = performance.now();
    this.bar = el("progress", { max: 100, value: 0 });
    this.state = el("span", { class: "state" }, "sending…");
    this.thumbs = el("div", { class: "thumbs" });
    this.node = el("li", { class: "task", "data-state": "sent" },
      el("h3", {}, title), el("p", { class: "prompt" }, prompt), this.bar, this.state,
      this.thumbs);
    const list = $("tasks");
    list.prepend(this.node);
    while (list.children.length > TASK_CARDS) list.lastElementChild.remove();
  }

  /** Progress in percent; undefined: accepted, not started yet. */
  progress(percent) {
    if (this.node.dataset.state === "done" || this.node.dataset.state === "error") return;
    const started = typeof percent === "number" && percent > 0;
    this.node.dataset.state = started ? "running" : "queued";
    this.bar.value = started ? percent : 0;
    this.state.textContent = started ? `running ${percent}%` : "queued";
  }

  note(text) {
    this.state.textContent = text;
  }

  addImage(url, entry) {
    if (!isWebURL(url)) return;
    const image = el("img", { src: url, alt: entry.prompt, loading: "lazy" });
    this.thumbs.append(el("a", { href: url, target: "_blank", rel: "noopener" }, image));
    addToGallery({ url, ...entry });
  }

  finish() {
    this.node.dataset.state = "done";
    this.bar.value = 100;
    const seconds = ((performance.now() - this.started) / 1000).toFixed(1);
    this.state.textContent = `done in ${seconds} s`;
  }

  fail(message) {
    this.node.dataset.state = "error";
    this.state.textContent = `error: ${message}`;
  }
}

/** Only http(s) URLs become links and images (never javascript: or the like). */
function isWebURL(url) {
  try {
    return ["http:", "https:"].includes(new URL(url, document.baseURI).protocol);
  } catch {
    return false;
  }
}

let gallery = [].concat(loadJSON(STORAGE.gallery, [])).filter((e) => isWebURL(e?.url));

function addToGallery(entry) {
  gallery = [entry, ...gallery.filter((e) => e.url !== entry.url)].slice(0, GALLERY_SIZE);
  saveJSON(STORAGE.gallery, gallery);
  renderGallery();
}

function renderGallery() {
  $("gallery").replaceChildren(...gallery.map(galleryItem));
}

function galleryItem(entry) {
  const caption = `${entry.prompt}\nseed ${entry.seed ?? "?"} · ${entry.model} · ${entry.action}`;
  const image = el("img", { src: entry.url, alt: entry.prompt, title: caption, loading: "lazy" });
  const item = el("li", {},
    el("a", { href: entry.url, target: "_blank", rel: "noopener" }, image),
    el("span", { class: "caption" }, entry.prompt),
    el("span", { class: "hint" }, `seed ${entry.seed ?? "?"}`));
  // Results expire on the server: say so instead of showing a broken image.
  image.onerror = () => item.classList.add("expired");
  return item;
}

// ---------------------------------------------------------------- engine status

/** The queue and the running batch, from the Server-Sent Events of GET /engine/events; an
 * older server without it gets "status unavailable" and another try later. */
function watchEngine() {
  const source = new EventSource(apiURL("engine/events"));
  const show = (event) => {
    try {
      renderEngine(JSON.parse(event.data));
    } catch {
      // a malformed message: keep the last good status
    }
  };
  source.addEventListener("status", show);
  source.onmessage = show;
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
    engineNote("status unavailable");
    setTimeout(watchEngine, ENGINE_RETRY_MS);
  };
}

function engineNote(text) {
  $("engine").replaceChildren(el("p", { class: "hint" }, text));
}

function renderEngine(status) {
  const queue = status.queue || { jobs: 0, images: 0 };
  const speed = Number(status.images_per_second || 0).toFixed(2);
  $("engine").replaceChildren(
    el("p", { class: status.ready ? "ready" : "not-ready" },
      status.ready ? "ready" : "not ready", ` · ${speed} images/s`),
    el("p", {}, `queue: ${queue.jobs} job(s), ${queue.images} image(s)`),
    el("ul", { class: "devices" }, ...(status.devices || []).map(deviceItem)));
}

function deviceItem(device) {
  const models = (device.models || []).join(", ") || "no model loaded";
  const batch = device.batch;
  const running = batch
    ? el("div", { class: "batch" },
      `running ${batch.model}: ${batch.jobs} job(s), ${batch.images} image(s) `,
      el("progress", { max: 1, value: batch.progress || 0 }))
    : el("div", { class: "hint" }, "idle");
  return el("li", {}, el("strong", {}, device.device), ` ${models}`, running);
}

// ---------------------------------------------------------------- models and form

function fillSelect(select, options, emptyText) {
  const chosen = select.value || select.dataset.remembered;
  select.replaceChildren(...options.map(([value, text]) => el("option", { value }, text)));
  if (!options.length) select.append(el("option", { value: "" }, emptyText));
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

let modelsLoaded = false;

/** Checkpoints, ControlNets and IP-Adapters from Runware modelSearch (the ids to send back
 * are its `air`); the preprocessors that can run here from PICPIK ListControlNets. */
async function loadModels() {
  const search = (category) => socket.request({
    taskType: "modelSearch", taskUUID: uuid4(), category, limit: 100,
  });
  const [checkpoints, controlnets, adapters] = await Promise.all(
    ["checkpoint", "controlnet", "ipadapter"].map(search));
  const options = (found) => found.results.map((m) => [m.air, `${m.name} (${m.air})`]);
  fillSelect($("model"), options(checkpoints), "no checkpoint installed");
  fillSelect($("controlnet-model"), options(controlnets), "no ControlNet installed");
  fillSelect($("ip-adapter"), options(adapters), "no IP-Adapter installed");
  modelsLoaded = true;
  let preprocessors = FALLBACK_PREPROCESSORS;
  try {
    const reply = await picpik("ListControlNets", {});
    preprocessors = Object.keys(reply.PreProcessors).filter((code) => code !== "none");
  } catch {
    // PICPIK keys not set on a keyed server: Runware's own names still work
  }
  fillSelect($("preprocessor"),
    [["", "none: the image is the guide"], ...preprocessors.map((p) => [p, p])], "");
}

/** Show what the chosen action needs, hide the rest. */
function showAction() {
  const action = ACTIONS[$("action").value];
  $("image-section").hidden = !action.image;
  $("image-label").textContent = action.image || "Image";
  $("strength-field").hidden = !action.strength;
  $("mask-canvas").hidden = !action.mask;
  $("mask-tools").hidden = !action.mask;
  for (const id of ["controlnet-section", "style-section"]) $(id).hidden = action.section !== id;
}

function rememberForm() {
  saveJSON(STORAGE.form, Object.fromEntries(REMEMBERED.map((id) => [id, $(id).value])));
}

function restoreForm() {
  const saved = loadJSON(STORAGE.form, {});
  for (const id of REMEMBERED) {
    if (typeof saved[id] !== "string") continue;
    $(id).dataset.remembered = saved[id]; // for selects filled later
    if ($(id).tagName !== "SELECT" || [...$(id).options].some((o) => o.value === saved[id])) {
      $(id).value = saved[id];
    }
  }
}

/** The form as numbers and strings; undefined for an empty optional number. */
function readForm() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  return {
    action: $("action").value,
    model: $("model").value,
    prompt: $("prompt").value.trim(),
    negative: $("negative").value.trim(),
    width: number("width"),
    height: number("height"),
    steps: number("steps"),
    cfg: number("cfg"),
    seed: number("seed"),
    count: number("count") || 1,
    scheduler: $("scheduler").value,
    strength: number("strength"),
    image: chosenImage,
    controlnetModel: $("controlnet-model").value,
    preprocessor: $("preprocessor").value,
    controlnetWeight: number("controlnet-weight"),
    ipAdapter: $("ip-adapter").value,
    styleWeight: number("style-weight"),
  };
}

/** What is missing before a request is worth sending; null when nothing. */
function formProblem(form) {
  const action = ACTIONS[form.action];
  if (!form.model) return "no model to use: put a checkpoint into the models directory";
  if (!form.prompt) return "write a prompt";
  if (action.image && !form.image) return `choose the ${action.image.toLowerCase()}`;
  if (action.mask && !maskPainted()) return "paint the area to redraw on the image";
  if (form.action === "controlnet" && !form.controlnetModel) return "no ControlNet is installed";
  if (form.action === "style" && !form.ipAdapter) return "no IP-Adapter is installed";
  return null;
}

// ---------------------------------------------------------------- image and mask

let chosenImage = null; // the chosen file as a data URI

function readImageFile() {
  const file = $("image").files[0];
  chosenImage = null;
  $("mask-editor").hidden = !file;
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    chosenImage = reader.result;
    $("image-preview").src = reader.result;
  };
  reader.readAsDataURL(file);
}

/** The mask canvas takes the image's own size, so the mask sent matches the image. */
function sizeMaskCanvas() {
  const canvas = $("mask-canvas");
  canvas.width = $("image-preview").naturalWidth;
  canvas.height = $("image-preview").naturalHeight;
}

function setUpMaskPainting() {
  const canvas = $("mask-canvas");
  const context = canvas.getContext("2d");
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale, scale];
  };
  const paint = (event) => {
    const [x, y, scale] = point(event);
    context.strokeStyle = "#ff2e63";
    context.lineCap = context.lineJoin = "round";
    context.lineWidth = Number($("brush").value) * scale;
    context.beginPath();
    context.moveTo(...(last || [x, y]));
    context.lineTo(x, y);
    context.stroke();
    last = [x, y];
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = null;
    paint(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (last) paint(event); });
  canvas.addEventListener("pointerup", () => { last = null; });
  $("clear-mask").addEventListener("click", () => {
    context.clearRect(0, 0, canvas.width, canvas.height);
  });
}

function maskPainted() {
  const canvas = $("mask-canvas");
  if (!canvas.width || !canvas.height) return false;
  const alpha = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < alpha.length; i += 4) if (alpha[i]) return true;
  return false;
}

/** The mask as Runware wants it: a PNG, white where painted (redraw), black elsewhere. */
function maskDataURI() {
  const painted = $("mask-canvas");
  const mask = el("canvas", { width: painted.width, height: painted.height });
  const context = mask.getContext("2d");
  context.drawImage(painted, 0, 0);
  context.globalCompositeOperation = "source-in"; // every painted pixel white
  context.fillStyle = "#fff";
  context.fillRect(0, 0, mask.width, mask.height);
  context.globalCompositeOperation = "destination-over"; // black behind
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  return mask.toDataURL("image/png");
}

// ---------------------------------------------------------------- submitting

/** The ControlNet guide: the image itself, or what the chosen preprocessor makes of it. */
async function controlGuide(form, card) {
  if (!form.preprocessor) return form.image;
  card.note(`preprocessing (${form.preprocessor})…`);
  const item = await socket.request({
    taskType: "imageControlNetPreProcess", taskUUID: uuid4(), inputImage: form.image,
    preProcessorType: form.preprocessor, width: form.width, height: form.height,
    outputFormat: "PNG",
  });
  const guide = el("img", { src: item.guideImageURL, alt: "ControlNet guide", class: "guide" });
  card.thumbs.append(guide);
  return item.guideImageUUID;
}

// The imageInference fields each action adds to the common ones.
const RUNWARE_FIELDS = {
  txt2img: async () => ({}),
  img2img: async (form) => ({ seedImage: form.image, strength: form.strength }),
  inpaint: async (form) => ({
    seedImage: form.image, maskImage: maskDataURI(), strength: form.strength,
  }),
  controlnet: async (form, card) => ({
    controlNet: [{
      model: form.controlnetModel, guideImage: await controlGuide(form, card),
      weight: form.controlnetWeight,
    }],
  }),
  style: async (form) => ({
    ipAdapters: [{ model: form.ipAdapter, guideImage: form.image, weight: form.styleWeight }],
  }),
};

async function submitRunware(form, card, entry) {
  const task = {
    taskType: "imageInference", taskUUID: uuid4(), deliveryMethod: "async",
    outputType: "URL", outputFormat: "PNG", model: form.model,
    positivePrompt: form.prompt, negativePrompt: form.negative || undefined,
    width: form.width, height: form.height, steps: form.steps, CFGScale: form.cfg,
    seed: form.seed, numberResults: form.count, scheduler: form.scheduler,
    ...(await RUNWARE_FIELDS[form.action](form, card)),
  };
  const seen = new Set();
  socket.watch(task.taskUUID, {
    async: true,
    item(item) {
      if (item.status === "processing") return card.progress(item.progress);
      if (!item.imageURL || seen.has(item.imageUUID)) return;
      seen.add(item.imageUUID); // pushed and polled items may both arrive
      card.addImage(item.imageURL, { ...entry, seed: item.seed });
      if (seen.size >= task.numberResults) {
        socket.unwatch(task.taskUUID);
        card.finish();
      }
    },
    error(error) {
      socket.unwatch(task.taskUUID);
      card.fail(errorText(error));
    },
  });
  socket.send([task]);
}

const picpikTasks = new Map(); // TaskUID -> {card, entry}
let picpikPolling = false;

/** A background behind a transparent foreground: PICPIK GenerateBackgrounds, then polling. */
async function submitBackground(form, card, entry) {
  const reply = await picpik("GenerateBackgrounds", {
    MainModel: {
      ModelCode: form.model,
      InferenceParams: { Steps: form.steps, CFGScale: form.cfg, Sampler: form.scheduler },
    },
    PositivePrompts: [form.prompt],
    NegativePrompts: form.negative ? [form.negative] : [],
    Seed: form.seed ?? -1,
    Width: form.width,
    Height: form.height,
    BatchSize: form.count,
    ImageList: [form.image],
    TransparentForeground: { ImageIndex: 0 },
  });
  card.progress(undefined);
  picpikTasks.set(reply.TaskUID, { card, entry });
  if (!picpikPolling) {
    picpikPolling = true;
    setTimeout(pollPicpik, PICPIK_POLL_MS);
  }
}

/** ListTasksDetails for every PICPIK task under way; again in PICPIK_POLL_MS while any is. */
async function pollPicpik() {
  await Promise.all([...picpikTasks].map(async ([taskUID, { card, entry }]) => {
    try {
      const reply = await picpik("ListTasksDetails", { TaskUIDList: [taskUID] });
      showPicpikDetail(reply.TaskDetailList[0], card, entry);
    } catch (error) {
      picpikTasks.delete(taskUID);
      card.fail(error.message);
    }
  }));
  picpikPolling = picpikTasks.size > 0;
  if (picpikPolling) setTimeout(pollPicpik, PICPIK_POLL_MS);
}

function showPicpikDetail(detail, card, entry) {
  if (detail.Status === "Queuing") return card.progress(undefined);
  if (detail.Status === "Running") return card.progress(Math.round(100 * (detail.Progress || 0)));
  picpikTasks.delete(detail.TaskUID);
  if (detail.Status === "Error") {
    return card.fail(`${detail.ErrorMassage} (ErrorCode ${detail.ErrorCode})`);
  }
  detail.ImgList.forEach((url, i) => card.addImage(url, { ...entry, seed: detail.Seed + i }));
  card.finish();
}

async function onSubmit(event) {
  event.preventDefault();
  const form = readForm();
  const problem = formProblem(form);
  $("form-error").textContent = problem || "";
  if (problem) return;
  rememberForm();
  const entry = {
    prompt: form.prompt, model: form.model, action: form.action,
    size: `${form.width}x${form.height}`, at: Date.now(),
  };
  const card = new TaskCard(`${ACTIONS[form.action].label} · ${form.model}`, form.prompt);
  try {
    await (form.action === "background" ? submitBackground : submitRunware)(form, card, entry);
  } catch (error) {
    card.fail(error.message);
  }
}

// ---------------------------------------------------------------- start

function showConnection(state, text) {
  $("connection").dataset.state = state;
  $("connection").textContent = text;
}

const socket = new RunwareSocket(showConnection, () => {
  if (!modelsLoaded) loadModels().catch((error) => showConnection("error", error.message));
});

function start() {
  const saved = loadJSON(STORAGE.keys, {});
  const keyInputs = { runware: "runware-key", picpikPublic: "picpik-public",
    picpikPrivate: "picpik-private" };
  for (const [name, id] of Object.entries(keyInputs)) {
    $(id).value = saved[name] || "";
    $(id).addEventListener("change", () => {
      saveJSON(STORAGE.keys, keys());
      if (name === "runware") socket.changeKey();
    });
  }
  fillSelect($("scheduler"), SCHEDULERS.map((s) => [s, s]), "");
  restoreForm();
  showAction();
  $("action").addEventListener("change", showAction);
  $("image").addEventListener("change", readImageFile);
  $("image-preview").addEventListener("load", sizeMaskCanvas);
  setUpMaskPainting();
  $("generate").addEventListener("submit", onSubmit);
  $("clear-gallery").addEventListener("click", () => {
    gallery = [];
    saveJSON(STORAGE.gallery, gallery);
    renderGallery();
  });
  renderGallery();
  socket.connect();
  watchEngine();
}

// For tests and the curious: the signing functions, as the page uses them.
window.easelPlayground = { sha1Hex, renderSigned, signRequest };
start();
