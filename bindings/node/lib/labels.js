'use strict';
// Labels at the instant of each sample. The signal handler reads the id of the label set in
// force on the sampled thread from one of two places, by mode (asyncLabels):
// - 'promises' (the default where V8 allows it: V8 11, Node 20): the context's
//   continuation-preserved embedder data (native.cpedSet / cpedGet, src/cped.rs). V8 copies it
//   into each promise reaction when `await` or `then` registers it and puts it back while the
//   reaction runs, so an async function keeps its labels across `await`, and the requests
//   running meanwhile never see them, with no work of ours per await. Callbacks that are not
//   promise reactions (timers, nextTick, I/O callbacks, event emitters) run unlabelled.
// - 'all' (asyncLabels: 'all', and the default where 'promises' is not available): a 4-byte
//   slot per thread (native.labelSlot()) that JavaScript keeps holding the id in force. The set
//   also lives in an AsyncLocalStorage, and an async hook puts it back in the slot before every
//   callback and continuation, so labels follow callbacks too, at a cost per await. The hook is
//   installed at the first label call. It has no `after`: that would cost a JavaScript call per
//   callback for a store that the next callback's `before` overwrites anyway. What runs
//   between callbacks (the loop's own work) keeps the last callback's set, and the addon clears
//   the slot each time the event loop is about to wait (native.clearLabelSlotWhenIdle()), so
//   the wait carries none.
// - 'sync' (asyncLabels: false): the slot, for the synchronous call only, as @pyroscope/nodejs 0.6.

const { AsyncLocalStorage, createHook } = require('node:async_hooks');
const native = require('./native');

const EMPTY = Object.freeze({ labels: Object.freeze({}), id: 0, set: null });

// Interned sets by content, and by id (the embedder data holds only the id). Bounded: past the
// limit a new generation starts, and the one before is still found. Sets in neither stay valid
// through the stores holding them; an id whose set was reclaimed reads as no labels.
const CACHE_LIMIT = 4096;
let byKey = new Map();
let byId = new Map();
let oldByKey = new Map();
let oldById = new Map();

// The V8 that carries labels in its continuation-preserved embedder data: 11.x (Node 20 to
// 21). From 12 on the field moved to the isolate, and Node 22.7+ / 24 keep their own
// AsyncLocalStorage in it.
const cpedPossible =
  Number(process.versions.v8.split('.')[0]) === 11 && process.versions.electron === undefined && native.jitNamesAvailable();

let mode = cpedPossible ? 'promises' : 'all';
// Whether this thread's embedder data was taken for labels (at the first label call).
let cpedOpen = false;
// A reset of the embedder data after setLabels is queued.
let resetQueued = false;

let slot = null;
let storage = null;
let hook = null;
// The store in force in 'sync' mode.
let syncStore = EMPTY;

function remember(key, store) {
  if (byKey.size >= CACHE_LIMIT) {
    oldByKey = byKey;
    oldById = byId;
    byKey = new Map();
    byId = new Map();
  }
  byKey.set(key, store);
  byId.set(store.id, store);
}

function intern(labels) {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return EMPTY;
  const pairs = [];
  for (const k of keys) pairs.push(k, String(labels[k]));
  const key = JSON.stringify(pairs);
  let store = byKey.get(key);
  if (store === undefined) {
    store = oldByKey.get(key);
    if (store === undefined) {
      const set = native.labelSet(pairs);
      store = Object.freeze({ labels: Object.freeze(Object.fromEntries(keys.map((k) => [k, labels[k]]))), id: set.id, set });
    }
    remember(key, store);
  }
  return store;
}

function ofId(id) {
  if (id === 0) return EMPTY;
  return byId.get(id) ?? oldById.get(id) ?? EMPTY;
}

// The 'promises' mode, once this thread's embedder data is ours; else the mode falls back to 'all'.
function ensureCped() {
  if (cpedOpen) return true;
  if (native.cpedOpen()) {
    cpedOpen = true;
    return true;
  }
  mode = 'all';
  return false;
}

function ensureHook() {
  if (hook !== null) return;
  slot ??= native.labelSlot();
  storage ??= new AsyncLocalStorage();
  const idleClearing = native.clearLabelSlotWhenIdle(true);
  const before = () => {
    const s = storage.getStore();
    slot[0] = s === undefined ? 0 : s.id;
  };
  // Without the addon's idle clearing (it could not start), an `after` hook does its job.
  hook = idleClearing ? createHook({ before }) : createHook({ before, after: () => { slot[0] = 0; } });
  hook.enable();
}

function current() {
  if (mode === 'promises') return cpedOpen ? ofId(native.cpedGet()) : EMPTY;
  if (mode === 'sync') return syncStore;
  return storage?.getStore() ?? EMPTY;
}

function checkLabels(labels) {
  if (labels === null || typeof labels !== 'object') throw new TypeError('labels must be an object of strings or numbers');
}

/** Runs fn(...args) with `labels` added to the labels in force; returns what fn returns. */
function wrapWithLabels(labels, fn, ...args) {
  checkLabels(labels);
  if (mode === 'promises' && ensureCped()) {
    const prev = native.cpedGet();
    native.cpedSet(intern({ ...ofId(prev).labels, ...labels }).id);
    try {
      return fn(...args);
    } finally {
      native.cpedSet(prev);
    }
  }
  const store = intern({ ...current().labels, ...labels });
  if (mode === 'sync') {
    slot ??= native.labelSlot();
    const prev = syncStore;
    syncStore = store;
    slot[0] = store.id;
    try {
      return fn(...args);
    } finally {
      syncStore = prev;
      slot[0] = prev.id;
    }
  }
  ensureHook();
  const prev = slot[0];
  return storage.run(store, () => {
    slot[0] = store.id;
    try {
      return fn(...args);
    } finally {
      slot[0] = prev;
    }
  });
}

/** The labels in force (a copy). */
function getLabels() {
  return { ...current().labels };
}

// In 'promises' mode the embedder data set by setLabels stays on the promise reactions
// registered until the current run ends; then it is cleared, so that the timers and I/O
// callbacks that run next, which V8 does not give embedder data, do not inherit it.
function resetAfterRun() {
  resetQueued = false;
  native.cpedSet(0);
}

/**
 * Makes `labels` the labels in force: for the rest of this synchronous run and the async
 * work it starts (everywhere, in 'sync' mode). Never wiped by an upload.
 */
function setLabels(labels) {
  checkLabels(labels);
  const store = intern(labels);
  if (mode === 'promises' && ensureCped()) {
    native.cpedSet(store.id);
    if (!resetQueued) {
      resetQueued = true;
      process.nextTick(resetAfterRun);
    }
    return;
  }
  if (mode === 'sync') {
    syncStore = store;
  } else {
    ensureHook();
    storage.enterWith(store);
  }
  slot ??= native.labelSlot();
  slot[0] = store.id;
}

/**
 * How labels follow async work (before any label call): `true` (the default) along promises
 * where V8 allows it at no cost per await, else as 'all'; 'all' along promises and callbacks
 * (AsyncLocalStorage); false: the synchronous call only.
 */
function configure({ async }) {
  if (async === false) mode = 'sync';
  else if (async === 'all' || !cpedPossible) mode = 'all';
  else mode = 'promises';
  if (mode !== 'promises' && cpedOpen) native.cpedSet(0);
  if (mode !== 'all' && hook !== null) {
    hook.disable();
    hook = null;
    native.clearLabelSlotWhenIdle(false);
  }
}

/** The mode in force: 'promises', 'all' or 'sync'. */
function labelMode() {
  return mode;
}

// Until init() says otherwise (and in worker threads, where init() is rarely called), the mode
// PYROSCOPE_ASYNC_LABELS gives, read as init() reads it.
{
  const v = process.env.PYROSCOPE_ASYNC_LABELS;
  configure({ async: v === undefined ? true : v === 'all' ? 'all' : v === 'true' || v === '1' });
}

module.exports = { wrapWithLabels, getLabels, setLabels, configure, labelMode };
