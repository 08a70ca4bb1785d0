// The Strata page: a client of the edge's HTTP API (login, the client's
// store, the apps) that also carries the client tier's detection and call
// units: it counts invocations per app, downloads an app past threshold 1,
// estimates the link's speed from real transfers, and runs a held current
// copy in this browser when the link is slower than threshold 2.

const $ = (id) => document.getElementById(id);

const KiB = 1024;
const MIN_SAMPLE = 16 * KiB; // smaller transfers measure latency, not speed
const SPEED_STALE_MS = 15000;
const SPEED_JUMP = 4; // a sample this many times off the estimate replaces it
const APPS_FRESH_MS = 2000; // re-read /api/apps at most this often before deciding
const LOCAL_LIMIT_MS = 5000; // an app's time limit in this browser

let me = null; // /api/whoami: client, tier, thresholds, maxUpload, probeBytes
let apps = new Map(); // id -> {id, version, hash, size, info}, from /api/apps
let appsAt = -Infinity; // performance.now() of the last /api/apps load
let appsLoading = null; // the /api/apps load under way
let cwd = []; // the store folder shown, as path segments
let estimate = null; // {bps, at}: the link's speed, at = performance.now()
let probing = null; // the probe under way
let speedError = ""; // why the last measurement failed
const pulling = new Map(); // app id -> its module download under way
let uploads = Promise.resolve(); // uploads run one after another
let answerURL = null; // object URL of a binary answer
let running = false; // an invocation is under way

let markReady;
const ready = new Promise((resolve) => (markReady = resolve));

// Failure is an error with a sentence for the user and what the server
// said besides (stderr, where).
class Failure extends Error {
  constructor(message, { status = 0, stderr = "", where = "" } = {}) {
    super(message);
    this.status = status;
    this.stderr = stderr;
    this.where = where;
  }
}

const UNREACHABLE = "The edge could not be reached: check the connection and try again.";

// ---- formatting ----

// size formats a byte count: "12 B", "1.2 MiB".
function size(n) {
  if (n < KiB) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (n /= KiB; n >= KiB && i < units.length - 1; i++) n /= KiB;
  return `${n.toFixed(1)} ${units[i]}`;
}

// rate formats bytes per second as the tiers do (1 KB = 1024 bytes):
// "38.2 KB/s", "50 KB/s".
function rate(bps) {
  const [v, unit] =
    bps >= 2 ** 30 ? [bps / 2 ** 30, "GB/s"] : bps >= 2 ** 20 ? [bps / 2 ** 20, "MB/s"] : [bps / KiB, "KB/s"];
  return `${+v.toFixed(1)} ${unit}`;
}

// plural: "1 invocation", "5 invocations".
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function age(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 1) return "just now";
  if (s < 120) return `${s} s ago`;
  return `${Math.floor(s / 60)} min ago`;
}

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

// ---- requests ----

// failure turns an error response into a Failure carrying the server's
// sentence. A 401 while signed in means the token was revoked: sign out.
async function failure(resp) {
  let body = {};
  try {
    body = await resp.json();
  } catch {
    // not JSON: fall back to the status line
  }
  const message = body.error || `The edge answered ${resp.status} ${resp.statusText}.`;
  if (resp.status === 401 && me) signedOut(message);
  return new Failure(message, { status: resp.status, stderr: body.stderr, where: body.where });
}

// api sends a request and returns the response, or throws a Failure.
async function api(method, url, init = {}) {
  let resp;
  try {
    resp = await fetch(url, { method, cache: "no-store", ...init });
  } catch {
    throw new Failure(UNREACHABLE);
  }
  if (!resp.ok) throw await failure(resp);
  return resp;
}

const getJSON = async (url) => (await api("GET", url)).json();

// readBody reads a response's body as it arrives, timing it from the
// headers (now) to its end, and feeds the speed estimate. It returns the
// bytes and the sample (bytes per second).
async function readBody(resp, { probe = false } = {}) {
  const start = performance.now();
  const chunks = [];
  let n = 0;
  try {
    const reader = resp.body.getReader();
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      chunks.push(r.value);
      n += r.value.length;
    }
  } catch {
    throw new Failure("The connection to the edge broke before the whole reply arrived.");
  }
  const sample = observe(n, performance.now() - start, probe);
  const bytes = new Uint8Array(n);
  chunks.reduce((off, c) => (bytes.set(c, off), off + c.length), 0);
  return { bytes, sample };
}

// ---- the speed estimate ----

// observe adds a transfer of n bytes that took ms to the estimate (an EWMA,
// new = 0.5 old + 0.5 sample) and returns its sample. Transfers under
// 16 KiB say nothing about speed. A probe is made for measuring the link as
// it is now: its sample restarts the estimate.
function observe(n, ms, probe = false) {
  if (n < MIN_SAMPLE && !probe) return null;
  const sample = n / (Math.max(ms, 1) / 1000); // browsers' timers are coarse
  // Averaged with the estimate, unless it is a probe, or far enough off
  // (a factor of SPEED_JUMP) to say the link changed: the client tier's rule.
  const near = estimate && sample < SPEED_JUMP * estimate.bps && sample * SPEED_JUMP > estimate.bps;
  const bps = near && !probe ? 0.5 * estimate.bps + 0.5 * sample : sample;
  estimate = { bps, at: performance.now() };
  speedError = "";
  showSpeed();
  return sample;
}

function speed() {
  return estimate && { bps: estimate.bps, ageMs: performance.now() - estimate.at };
}

// probe measures the link by reading /api/probe; concurrent callers share
// one probe. It resolves to the probe's sample in bytes per second.
function probe() {
  probing ??= (async () => {
    try {
      const resp = await api("GET", `/api/probe?n=${me.probeBytes}`);
      return (await readBody(resp, { probe: true })).sample;
    } catch (e) {
      speedError = e.message;
      showSpeed();
      throw e;
    } finally {
      probing = null;
    }
  })();
  return probing;
}

function showSpeed() {
  const s = speed();
  let text = "not measured yet";
  if (s) {
    text = `${rate(s.bps)}, measured ${age(s.ageMs)}${s.ageMs >= SPEED_STALE_MS ? " (stale)" : ""}`;
  }
  $("speed").textContent = speedError ? `${text}; the last measurement failed: ${speedError}` : text;
}

// ---- held copies (IndexedDB "strata", store "modules", key client/app) ----

let database = null;
function db() {
  database ??= new Promise((resolve, reject) => {
    const req = indexedDB.open("strata", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("modules");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return database;
}

// modules runs fn(store) in a transaction and resolves to the result of
// the request fn returns, once the transaction has committed.
async function modules(mode, fn) {
  const tx = (await db()).transaction("modules", mode);
  const req = fn(tx.objectStore("modules"));
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve(req?.result);
    tx.onerror = tx.onabort = () => reject(tx.error);
  });
}

const moduleKey = (app) => `${me.client}/${app}`;
// A copy that cannot be read (no IndexedDB here) is not held.
const heldRecord = (app) => modules("readonly", (s) => s.get(moduleKey(app))).catch(() => null);

async function held(app) {
  const r = await heldRecord(app);
  return r ? { version: r.version, hash: r.hash } : null;
}

// isCurrent: a held copy counts only while its hash is the edge's.
const isCurrent = (copy, app) => !!copy && !!apps.get(app)?.hash && copy.hash === apps.get(app).hash;

// dropStale deletes this client's held copies whose hash differs from the
// hash the edge now states for their app.
function dropStale() {
  const prefix = `${me.client}/`;
  return modules("readwrite", (store) => {
    const req = store.openCursor(IDBKeyRange.bound(prefix, `${prefix}\uffff`));
    req.onsuccess = () => {
      const c = req.result;
      if (!c) return;
      const hash = apps.get(c.value.id)?.hash;
      if (hash && hash !== c.value.hash) c.delete();
      c.continue();
    };
  });
}

// pull downloads an app's module, checks its SHA-256 against the header
// and /api/apps, and keeps it. One download per app at a time.
function pull(app) {
  if (!pulling.has(app)) {
    const key = moduleKey(app);
    const p = (async () => {
      if (!crypto.subtle) {
        throw new Failure("this page is not served over HTTPS, so the browser cannot verify a download");
      }
      const resp = await api("GET", `/api/apps/${encodeURIComponent(app)}/module.wasm`);
      const { bytes } = await readBody(resp);
      const hash = hex(await crypto.subtle.digest("SHA-256", bytes));
      const stated = (resp.headers.get("X-Strata-Hash") || "").toLowerCase();
      if (hash !== stated || hash !== apps.get(app)?.hash) {
        throw new Failure("the module did not match its published hash");
      }
      const version = Number(resp.headers.get("X-Strata-Version")) || apps.get(app).version;
      const record = { id: app, version, hash, bytes: bytes.buffer, stored: Date.now() };
      await modules("readwrite", (s) => s.put(record, key));
    })();
    pulling.set(app, p);
    p.then(
      () => showHeld(app),
      (e) => showHeld(app, e.message),
    ).finally(() => pulling.delete(app));
  }
  return pulling.get(app);
}

// ---- counting ----

const countKey = (app) => `strata.count.${me.client}.${app}`;

function count(app) {
  return me ? Number(localStorage.getItem(countKey(app))) || 0 : 0;
}

function bump(app) {
  const n = count(app) + 1;
  localStorage.setItem(countKey(app), String(n));
  return n;
}

// ---- apps ----

// loadApps reads /api/apps, drops stale held copies and redraws the panel.
function loadApps() {
  appsLoading ??= (async () => {
    try {
      const { apps: list } = await getJSON("/api/apps");
      apps = new Map(list.map((a) => [a.id, a]));
      appsAt = performance.now();
      renderAppSelect();
      await dropStale().catch(() => {}); // without IndexedDB nothing is held
      showApp();
    } finally {
      appsLoading = null;
    }
  })();
  return appsLoading;
}

function renderAppSelect() {
  const select = $("app-select");
  const chosen = select.value;
  select.replaceChildren(
    ...[...apps.values()].map((a) => new Option(a.version ? `${a.id} (version ${a.version})` : a.id, a.id)),
  );
  if (apps.has(chosen)) select.value = chosen;
  if (!apps.size) select.append(new Option("no apps", "", true, true));
  select.disabled = !apps.size;
  setRunnable();
}

function setRunnable() {
  $("run-button").disabled = running || !apps.size;
}

function showApp() {
  const app = $("app-select").value;
  $("app-info").textContent = apps.get(app)?.info ?? "";
  $("app-count").textContent = app ? `invoked ${plural(count(app), "time")} from this browser` : "";
  showHeld(app);
}

// showHeld tells whether a copy of app is held here, with a reason when a
// download failed.
async function showHeld(app, problem = "") {
  if (!app || app !== $("app-select").value) return;
  const copy = await held(app);
  if (app !== $("app-select").value) return;
  $("held").textContent = copy
    ? `held in this browser: version ${copy.version}, hash ${copy.hash.slice(0, 12)}`
    : `not held in this browser${problem ? ` (the download failed: ${problem})` : ""}`;
}

// ---- invoking ----

// requestID names one invocation; a retry reuses it, so the app runs once.
function requestID(app) {
  const random = hex(crypto.getRandomValues(new Uint8Array(8)));
  return `app.${app}.${Date.now().toString(16)}-${random}`;
}

// decide picks where an invocation runs: here when a current copy is held
// and the link is slower than threshold 2.
async function decide(app) {
  if (performance.now() - appsAt > APPS_FRESH_MS) {
    // Without a fresh list the last one decides; the call reports any trouble.
    await loadApps().catch(() => {});
  }
  if (!isCurrent(await held(app), app)) return null;
  let bps = estimate?.bps;
  if (!estimate || performance.now() - estimate.at >= SPEED_STALE_MS) {
    bps = await probe().catch(() => null);
  }
  if (bps == null || bps >= me.threshold2) return null;
  return `ran in this browser: link ${rate(bps)} is under ${rate(me.threshold2)}`;
}

// callRemote sends an invocation to the edge, retrying once with the same
// request ID if the request did not get through.
async function callRemote(app, input) {
  const id = requestID(app);
  const send = () =>
    fetch(`/api/apps/${encodeURIComponent(app)}/call`, {
      method: "POST",
      cache: "no-store",
      headers: { "X-Strata-Request-ID": id, "Content-Type": "application/octet-stream" },
      body: input,
    });
  let resp;
  try {
    resp = await send();
  } catch {
    try {
      resp = await send();
    } catch {
      throw new Failure("The edge could not be reached, so the app did not run: check the connection and try again.");
    }
  }
  if (!resp.ok) throw await failure(resp);
  const { bytes } = await readBody(resp);
  return {
    stdout: bytes,
    where: resp.headers.get("X-Strata-Where") || "the edge",
    why: resp.headers.get("X-Strata-Why") || "",
  };
}

// runLocal runs the held copy in a worker with the WASI shim, stopping it
// after the time limit.
// compiled keeps each held copy compiled, by app, with its hash: a Go
// module takes tens of milliseconds to compile, every run.
const compiled = new Map();

async function compiledCopy(app) {
  const hash = apps.get(app)?.hash;
  const c = compiled.get(app);
  if (c && c.hash === hash) return c.module;
  const copy = await heldRecord(app);
  if (!copy) return null;
  const module = WebAssembly.compile(copy.bytes);
  compiled.set(app, { hash: copy.hash, module });
  module.catch(() => compiled.delete(app));
  return module;
}

// A worker started ahead of need, so that a run does not wait for one to
// load its scripts. Each worker runs one app once.
let spareWorker = null;

function takeWorker() {
  const w = spareWorker ?? new Worker("/static/worker.js", { type: "module" });
  spareWorker = new Worker("/static/worker.js", { type: "module" });
  return w;
}

async function runLocal(app, input, why) {
  const here = { where: "this browser" };
  const module = await compiledCopy(app).catch((e) => {
    throw new Failure(`The copy of ${app} held in this browser does not compile: ${e.message}.`, here);
  });
  if (!module) throw new Failure(`The copy of ${app} held in this browser is gone.`, here);
  const stdin = input instanceof Blob ? new Uint8Array(await input.arrayBuffer()) : input;
  const result = await new Promise((resolve, reject) => {
    const worker = takeWorker();
    let timer;
    const end = (settle, value) => {
      clearTimeout(timer);
      worker.terminate();
      settle(value);
    };
    worker.onmessage = ({ data }) => {
      if (data.started) {
        timer = setTimeout(
          () => end(reject, new Failure(`stopped: the app ran longer than ${LOCAL_LIMIT_MS / 1000}s in this browser`, here)),
          LOCAL_LIMIT_MS,
        );
      } else if (data.error) {
        end(reject, new Failure(`The app could not run in this browser: ${data.error}.`, here));
      } else {
        end(resolve, data);
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      end(reject, new Failure(`The app could not run in this browser: ${e.message || "the worker did not start"}.`, here));
    };
    worker.postMessage({ module, args: [app], input: stdin });
  });
  if (result.exitCode !== 0) {
    const stderr = new TextDecoder().decode(result.stderr);
    throw new Failure(`The app ${app} failed in this browser: it exited with status ${result.exitCode}.`, {
      ...here,
      stderr,
    });
  }
  return { stdout: result.stdout, where: "this browser", why };
}

// invoke runs the chosen app on the input and shows the outcome.
async function invoke() {
  const app = $("app-select").value;
  if (!app) return;
  const answer = $("answer");
  answer.dataset.state = "running";
  running = true;
  setRunnable();
  clearAnswer();
  $("app-count").textContent = `invoked ${plural(bump(app), "time")} from this browser`;
  const file = $("app-file").files[0];
  const input = file ?? new TextEncoder().encode($("app-input").value);
  try {
    const why = await decide(app);
    const start = performance.now();
    const result = why ? await runLocal(app, input, why) : await callRemote(app, input);
    showAnswer(app, result, performance.now() - start);
    answer.dataset.state = "done";
  } catch (e) {
    showFailure(e);
    answer.dataset.state = "error";
  } finally {
    running = false;
    setRunnable();
    if ($("edge-status").open) loadStatus();
  }
  // Past threshold 1 without a current copy: download one in the background.
  if (me && count(app) > me.threshold1 && apps.get(app)?.hash && !isCurrent(await held(app), app)) {
    pull(app).catch(() => {}); // shown in #held
  }
}

function clearAnswer() {
  for (const id of ["app-error", "answer", "answer-where", "answer-why", "answer-time"]) $(id).textContent = "";
  $("answer-download").hidden = true;
}

function showAnswer(app, { stdout, where, why }, ms) {
  const answer = $("answer");
  const link = $("answer-download");
  try {
    answer.textContent = new TextDecoder("utf-8", { fatal: true }).decode(stdout);
  } catch {
    answer.textContent = `${stdout.length} bytes of binary output`;
    if (answerURL) URL.revokeObjectURL(answerURL);
    answerURL = URL.createObjectURL(new Blob([stdout], { type: "application/octet-stream" }));
    link.href = answerURL;
    link.download = `${app}-output.bin`;
    link.hidden = false;
  }
  $("answer-where").textContent = where;
  $("answer-why").textContent = why;
  $("answer-time").textContent = `${Math.round(ms)} ms`;
}

function showFailure(e) {
  const box = $("app-error");
  const message = document.createElement("p");
  message.textContent = e.message;
  box.replaceChildren(message);
  if (e.stderr) {
    const stderr = document.createElement("pre");
    stderr.textContent = e.stderr;
    box.append(stderr);
  }
  $("answer-where").textContent = e.where || "";
}

// ---- the store ----

// storeURL is the API URL of a store path, each segment escaped.
const storeURL = (segs) => `/api/store/${segs.map(encodeURIComponent).join("/")}`;

function storeError(e) {
  $("store-error").textContent = e ? e.message : "";
}

// openDir shows the folder segs.
async function openDir(segs) {
  try {
    const listing = await getJSON(storeURL(segs));
    cwd = segs;
    renderCrumbs();
    renderList(listing.entries);
  } catch (e) {
    storeError(e);
    throw e;
  }
}

// Failures below are shown in #store-error.
const refresh = () => openDir(cwd).catch(() => {});
const go = (segs) => {
  storeError(null);
  openDir(segs).catch(() => {});
};

function renderCrumbs() {
  const crumbs = [{ name: "store", segs: [] }, ...cwd.map((name, i) => ({ name, segs: cwd.slice(0, i + 1) }))];
  $("breadcrumbs").replaceChildren(
    ...crumbs.map(({ name, segs }, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "crumb";
      b.textContent = name;
      if (i === crumbs.length - 1) b.setAttribute("aria-current", "location");
      b.onclick = () => go(segs);
      return b;
    }),
  );
}

function cell(className, ...children) {
  const td = document.createElement("td");
  td.className = className;
  td.append(...children);
  return td;
}

function button(className, text, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.setAttribute("aria-label", label);
  return b;
}

function renderList(entries) {
  const rows = entries.map((e) => {
    const tr = document.createElement("tr");
    tr.dataset.name = e.name;
    tr.className = e.dir ? "dir" : "file";
    const a = document.createElement("a");
    a.textContent = e.name;
    a.href = storeURL([...cwd, e.name]) + (e.dir ? "" : "?download=1");
    const time = document.createElement("time");
    time.dateTime = e.mtime;
    const mtime = new Date(e.mtime);
    time.textContent = isNaN(mtime) ? "" : dateFormat.format(mtime);
    tr.append(
      cell("name", a),
      cell("size", e.dir ? "—" : size(e.size)),
      cell("mtime", time),
      cell("actions", button("rename", "Rename", `Rename ${e.name}`), button("delete", "Delete", `Delete ${e.name}`)),
    );
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell("", "This folder is empty. Upload files or make a new folder.");
    td.colSpan = 4;
    tr.append(td);
    rows.push(tr);
  }
  $("store-list").replaceChildren(...rows);
}

// badName says what is wrong with a new file or folder name, if anything.
function badName(name) {
  if (name === "" || name === "." || name === "..") return `"${name}" cannot be used as a name.`;
  if (name.includes("/")) return 'A name cannot contain "/".';
  return "";
}

// storeOp runs one store change and shows the folder again.
async function storeOp(method, url) {
  storeError(null);
  try {
    await api(method, url);
  } catch (e) {
    storeError(e);
  }
  await refresh();
}

async function onListClick(ev) {
  const row = ev.target.closest("tr[data-name]");
  if (!row) return;
  const name = row.dataset.name;
  const url = storeURL([...cwd, name]);
  if (ev.target.closest("a") && row.classList.contains("dir")) {
    ev.preventDefault();
    go([...cwd, name]);
  } else if (ev.target.closest("button.rename")) {
    const to = prompt(`New name for "${name}":`, name);
    if (to === null || to === name) return;
    if (badName(to)) return storeError(new Failure(badName(to)));
    await storeOp("POST", `${url}?op=rename&to=${encodeURIComponent([...cwd, to].join("/"))}`);
  } else if (ev.target.closest("button.delete")) {
    const what = row.classList.contains("dir") ? `the folder "${name}"` : `"${name}"`;
    if (confirm(`Delete ${what}? This cannot be undone.`)) await storeOp("DELETE", url);
  }
}

async function mkdir() {
  const name = prompt("Name of the new folder:");
  if (name === null) return;
  if (badName(name)) return storeError(new Failure(badName(name)));
  await storeOp("POST", `${storeURL([...cwd, name])}?op=mkdir`);
}

// upload queues files for the folder shown now.
function upload(files) {
  const dir = cwd;
  storeError(null);
  const job = async () => {
    const done = [];
    for (const [i, file] of files.entries()) {
      const of = files.length > 1 ? ` (file ${i + 1} of ${files.length})` : "";
      try {
        await put(dir, file, of);
        done.push(file.name);
      } catch (e) {
        storeError(e);
        break;
      }
    }
    $("upload-progress").hidden = true;
    $("upload-status").textContent = done.length === 1 ? `uploaded ${done[0]}` : done.length ? `uploaded ${done.length} files` : "";
    await refresh();
  };
  uploads = uploads.then(job).catch(storeError);
}

// put uploads one file with XMLHttpRequest, streaming it from disk and
// showing progress; the upload feeds the speed estimate.
function put(dir, file, of) {
  if (file.size > me.maxUpload) {
    return Promise.reject(
      new Failure(`${file.name} is ${size(file.size)}, more than the ${size(me.maxUpload)} the edge accepts.`),
    );
  }
  const bar = $("upload-progress");
  const status = $("upload-status");
  const show = (sent) => {
    bar.max = file.size || 1;
    bar.value = sent;
    const pct = file.size ? Math.floor((100 * sent) / file.size) : 100;
    status.textContent = `uploading ${file.name}: ${pct}% of ${size(file.size)}${of}`;
  };
  bar.hidden = false;
  show(0);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    let start;
    xhr.open("PUT", storeURL([...dir, file.name]));
    xhr.upload.onloadstart = () => (start = performance.now());
    xhr.upload.onprogress = (e) => show(e.loaded);
    xhr.upload.onload = () => {
      show(file.size);
      observe(file.size, performance.now() - start);
    };
    xhr.onload = async () => {
      if (xhr.status < 300) return resolve();
      // failure() reads the JSON error the same way as for fetch.
      reject(await failure(new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText })));
    };
    xhr.onerror = () => reject(new Failure(`The upload of ${file.name} failed: the connection to the edge broke.`));
    xhr.send(file);
  });
}

// Dropping files on the drop zone uploads them; elsewhere a dropped file
// must not replace the page.
function wireDrop() {
  const zone = $("drop-zone");
  const hasFiles = (e) => e.dataTransfer?.types.includes("Files");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    zone.classList.remove("dragging");
    // A dropped folder arrives as a File that cannot be read: skip it.
    const items = [...e.dataTransfer.items];
    const files = [...e.dataTransfer.files].filter((_, i) => !items[i]?.webkitGetAsEntry?.()?.isDirectory);
    if (files.length) upload(files);
    if (files.length < e.dataTransfer.files.length) {
      storeError(new Failure("Folders cannot be uploaded; drop the files inside them instead."));
    }
  });
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => {
      if (hasFiles(e) && e.target.type !== "file") e.preventDefault();
    });
  }
}

// ---- status ----

async function loadStatus() {
  const pre = $("edge-status-text");
  try {
    pre.textContent = await (await api("GET", "/api/status")).text();
  } catch (e) {
    pre.textContent = e.message;
  }
}

// ---- signing in and out ----

function showLogin(message) {
  $("auth-error").textContent = message;
  $("loading").hidden = true;
  $("main").hidden = true;
  $("login").hidden = false;
  $("token-input").focus();
}

// signedOut forgets what the page showed of the client, so that the next
// one to sign in never sees it.
function signedOut(message) {
  me = null;
  apps = new Map();
  renderAppSelect();
  clearAnswer();
  for (const id of ["whoami", "edge", "app-info", "held", "app-count", "upload-status", "store-error"]) $(id).textContent = "";
  $("store-list").replaceChildren();
  $("breadcrumbs").replaceChildren();
  showLogin(message);
}

async function login(token) {
  const resp = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  }).catch(() => {
    throw new Failure(UNREACHABLE);
  });
  if (!resp.ok) throw await failure(resp);
}

// enter loads the main view: who this is, the apps and the store root.
async function enter() {
  let who;
  try {
    who = await getJSON("/api/whoami");
  } catch (e) {
    // At load the server has already said in #auth-error why a cookie failed.
    showLogin(e.status === 401 ? "" : e.message);
    return;
  }
  me = who;
  cwd = [];
  clearAnswer(); // a previous client's
  $("whoami").textContent = me.client;
  $("edge").textContent = me.tier;
  $("threshold1").textContent = plural(me.threshold1, "invocation");
  $("threshold2").textContent = rate(me.threshold2);
  $("auth-error").textContent = "";
  $("login").hidden = true;
  $("loading").hidden = true;
  $("main").hidden = false;
  showSpeed();
  const appsLoaded = loadApps().catch((e) => {
    showFailure(e);
    throw e;
  });
  await Promise.all([appsLoaded, openDir([])]);
  markReady();
}

async function onLogin(ev) {
  ev.preventDefault();
  const button = $("login-button");
  button.disabled = true;
  try {
    await login($("token-input").value);
    $("token-input").value = "";
    await enter();
  } catch (e) {
    showLogin(e.message);
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  try {
    await api("POST", "/api/logout");
    signedOut("");
  } catch (e) {
    signedOut(`Signing out failed: ${e.message}`);
  }
}

// ---- start ----

function wire() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", logout);
  $("probe-button").addEventListener("click", () => probe().catch(() => {})); // shown in #speed
  $("edge-status").addEventListener("toggle", () => $("edge-status").open && loadStatus());
  $("store-list").addEventListener("click", onListClick);
  $("mkdir-button").addEventListener("click", mkdir);
  $("upload-input").addEventListener("change", (e) => {
    upload([...e.target.files]);
    e.target.value = "";
  });
  $("app-select").addEventListener("change", showApp);
  $("app-file").addEventListener("change", () => ($("app-file-clear").hidden = !$("app-file").files.length));
  $("app-file-clear").addEventListener("click", () => {
    $("app-file").value = "";
    $("app-file-clear").hidden = true;
  });
  $("run-button").addEventListener("click", invoke);
  wireDrop();
  setInterval(() => me && showSpeed(), 1000); // the estimate's age
}

// fragmentToken is the token in a URL ending "#token=TOKEN", or null.
function fragmentToken() {
  const m = /^#token=(.+)$/.exec(location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1]; // not percent-encoded after all
  }
}

// begin signs in with the token in the URL's fragment, if there is one,
// then shows the main view, or the sign-in form saying why not.
async function begin() {
  const token = fragmentToken();
  if (token !== null) {
    try {
      await login(token);
      $("auth-error").textContent = "";
    } catch (e) {
      $("auth-error").textContent = e.message;
    }
    history.replaceState(null, "", location.pathname + location.search);
  }
  const reason = $("auth-error").textContent.trim();
  if (reason) showLogin(reason);
  else await enter().catch(() => {}); // failures are shown in their panels
}

// For tests and the curious.
// measure times n invocations of app with input, all remote or all in
// this browser (a held copy is needed), as the user would wait for them,
// and returns the milliseconds of each. For benchmarks; it does not count
// as invocations.
async function measure(app, text, mode, n) {
  const input = new TextEncoder().encode(text);
  const out = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    if (mode === "local") await runLocal(app, input, "measured");
    else await callRemote(app, input);
    out.push(performance.now() - start);
  }
  return out;
}

window.strata = { held, count, speed, probe, ready, measure };

wire();
// A token pasted into the address bar of an open page changes only the hash.
window.addEventListener("hashchange", () => fragmentToken() !== null && begin());
begin();

