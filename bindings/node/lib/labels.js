'use strict';
// Labels at the instant of each sample. The signal handler reads one 32-bit slot per thread
// (native.labelSlot()); JavaScript keeps it holding the id of the label set in force:
// - wrapWithLabels / setLabels store the id directly (a plain typed-array store);
// - with async propagation on (the default), the set also lives in an AsyncLocalStorage, and
//   an async hook puts it back in the slot before every callback and continuation, so an
//   async function keeps its labels across `await` and the requests running meanwhile never
//   see them. The hook is installed at the first label call, and only then costs anything.
//   It has no `after`: that would cost a JavaScript call per callback for a store that the
//   next callback's `before` overwrites anyway. What runs between callbacks (the loop's own
//   work) keeps the last callback's set, and the addon clears the slot each time the event
//   loop is about to wait (native.clearLabelSlotWhenIdle()), so the wait carries none.

const { AsyncLocalStorage, createHook } = require('node:async_hooks');
const native = require('./native');

const slot = native.labelSlot();
const storage = new AsyncLocalStorage();
const EMPTY = Object.freeze({ labels: Object.freeze({}), id: 0, set: null });

// Interned sets by content. Bounded: past the limit it starts over (sets still in use stay
// valid through the stores holding them).
const CACHE_LIMIT = 4096;
let cache = new Map();

let asyncLabels = true;
let hook = null;
// The store in force when async propagation is off (setLabels / wrapWithLabels only).
let syncStore = EMPTY;

function intern(labels) {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return EMPTY;
  const pairs = [];
  for (const k of keys) pairs.push(k, String(labels[k]));
  const key = JSON.stringify(pairs);
  let store = cache.get(key);
  if (store === undefined) {
    const set = native.labelSet(pairs);
    store = Object.freeze({ labels: Object.freeze(Object.fromEntries(keys.map((k) => [k, labels[k]]))), id: set.id, set });
    if (cache.size >= CACHE_LIMIT) cache = new Map();
    cache.set(key, store);
  }
  return store;
}

function current() {
  if (!asyncLabels) return syncStore;
  return storage.getStore() ?? EMPTY;
}

function ensureHook() {
  if (hook !== null || !asyncLabels) return;
  const idleClearing = native.clearLabelSlotWhenIdle(true);
  const before = () => {
    const s = storage.getStore();
    slot[0] = s === undefined ? 0 : s.id;
  };
  // Without the addon's idle clearing (it could not start), an `after` hook does its job.
  hook = idleClearing ? createHook({ before }) : createHook({ before, after: () => { slot[0] = 0; } });
  hook.enable();
}

function checkLabels(labels) {
  if (labels === null || typeof labels !== 'object') throw new TypeError('labels must be an object of strings or numbers');
}

/** Runs fn(...args) with `labels` added to the labels in force; returns what fn returns. */
function wrapWithLabels(labels, fn, ...args) {
  checkLabels(labels);
  const store = intern({ ...current().labels, ...labels });
  if (!asyncLabels) {
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

/**
 * Makes `labels` the labels in force: for the rest of this synchronous run and the async
 * work it starts (everywhere, when async propagation is off). Never wiped by an upload.
 */
function setLabels(labels) {
  checkLabels(labels);
  const store = intern(labels);
  if (!asyncLabels) {
    syncStore = store;
  } else {
    ensureHook();
    storage.enterWith(store);
  }
  slot[0] = store.id;
}

/** Async propagation on or off (before any label call). */
function configure({ async }) {
  asyncLabels = async !== false;
  if (!asyncLabels && hook !== null) {
    hook.disable();
    hook = null;
    native.clearLabelSlotWhenIdle(false);
  }
}

module.exports = { wrapWithLabels, getLabels, setLabels, configure };
