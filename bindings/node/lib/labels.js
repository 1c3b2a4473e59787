'use strict';
// Labels at the instant of each sample. The signal handler reads the id of the label set in
// force on the sampled thread from one of two places, by mode (asyncLabels):
// - 'promises' (the default where V8 allows it: V8 11, Node 20): the context's
//   continuation-preserved embedder data (src/cped.rs; read and written by cpedGet / cpedSet,
//   plain V8 functions the addon makes, ten times cheaper than Node-API calls) holds the
//   carrier of the set in force (a small object with the set's id). V8 copies it into each
//   promise reaction when `await` or `then` registers it and puts it back while the reaction
//   runs, so an async function keeps its labels across `await`, and the requests running
//   meanwhile never see them, with no work of ours per await; a reaction that holds a carrier
//   keeps its set alive. Callbacks that are not promise reactions (timers, nextTick, I/O
//   callbacks, event emitters) run unlabelled. setLabels inside such a labelled scope changes
//   the scope's labels (V8 or wrapWithLabels puts the previous ones back where the scope
//   ends); outside any, it sets the thread's base labels, which the slot below holds and
//   samples outside labelled scopes carry (everywhere, as @pyroscope/nodejs 0.6's setLabels).
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

// What the embedder data holds for a label set: the set's id as an int32 (always a Smi) next
// to a magic number, in fields V8 keeps in the object itself, found by the addon at the first
// label call (cpedOpen) from a sample carrier. Never changed after construction.
class LabelCarrier {
  constructor(id, store) {
    this.magic = native.CARRIER_MAGIC;
    this.id = id | 0;
    this.store = store;
  }
}

// A store: an interned label set, its carrier, and the stores made from it by adding labels
// (`merged`), at most ADDED_LIMIT of them.
const ADDED_LIMIT = 1024;
// A node of a store's tree of added labels.
const node = () => ({ store: null, next: null });
const EMPTY = Object.freeze({
  labels: Object.freeze({}),
  id: 0,
  set: null,
  carrier: undefined,
  added: { root: node(), nodes: 0 },
});

// Interned sets by content. Bounded: past the limit it starts over (sets still in use stay
// valid through what holds them: carriers in promise reactions, AsyncLocalStorage, slots).
const CACHE_LIMIT = 4096;
let cache = new Map();

// The V8 that carries labels in its continuation-preserved embedder data: 11.x (Node 20 to
// 21). From 12 on the field moved to the isolate, and Node 22.7+ / 24 keep their own
// AsyncLocalStorage in it.
// Electron's and NW.js's Chromium use the field too.
const cpedPossible =
  Number(process.versions.v8.split('.')[0]) === 11 &&
  process.versions.electron === undefined &&
  process.versions.nw === undefined &&
  native.jitNamesAvailable();
// Claimed on this thread's global by the copy of the package that carries labels there (two
// copies in one process would read each other's carriers as their own).
const CLAIM = Symbol.for('pyroscope-profiler.labels.cped');

let mode = cpedPossible ? 'promises' : 'all';
// Whether this thread's embedder data was taken for labels (at the first label call).
let cpedOpen = false;
// The embedder data's accessors, once open.
let cpedGet = null;
let cpedSet = null;

let slot = null;
let storage = null;
let hook = null;
// The store in force in 'sync' mode, and the base labels of 'promises' mode.
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
    store = {
      labels: Object.freeze(Object.fromEntries(keys.map((k) => [k, labels[k]]))),
      id: set.id,
      set,
      carrier: undefined,
      added: { root: node(), nodes: 0 },
    };
    store.carrier = new LabelCarrier(set.id, store);
    Object.freeze(store);
    if (cache.size >= CACHE_LIMIT) cache = new Map();
    cache.set(key, store);
  }
  return store;
}

// The store of `base` with `labels` added (later keys win). The stores made this way hang in
// `base.added`, a tree by key then value in the order `labels` has them, so that a labelled call
// costs two Map lookups per label; values other than strings and numbers take the long way.
function merged(base, labels) {
  const tree = base.added;
  let at = tree.root;
  for (const k of Object.keys(labels)) {
    const v = labels[k];
    if (typeof v !== 'string' && typeof v !== 'number') return intern({ ...base.labels, ...labels });
    at.next ??= new Map();
    let values = at.next.get(k);
    if (values === undefined) at.next.set(k, (values = new Map()));
    let child = values.get(v);
    if (child === undefined) {
      if (tree.nodes >= ADDED_LIMIT) {
        tree.root = node();
        tree.nodes = 0;
        return merged(base, labels);
      }
      values.set(v, (child = node()));
      tree.nodes++;
    }
    at = child;
  }
  at.store ??= intern({ ...base.labels, ...labels });
  return at.store;
}

// The 'promises' mode, once this thread's embedder data is ours; else the mode falls back to 'all'.
function ensureCped() {
  if (cpedOpen) return true;
  const claimed = globalThis[CLAIM];
  const sentinel = -0x2ced5a3;
  if ((claimed === undefined || claimed === LabelCarrier) && native.cpedOpen(new LabelCarrier(sentinel, EMPTY), sentinel)) {
    const accessors = native.cpedAccessors();
    if (accessors !== null) {
      [cpedGet, cpedSet] = accessors;
      Object.defineProperty(globalThis, CLAIM, { value: LabelCarrier, configurable: true });
      cpedOpen = true;
      return true;
    }
  }
  mode = 'all';
  return false;
}

// The carrier in this thread's embedder data, if it is one of ours.
function carrierNow() {
  const c = cpedGet();
  return c instanceof LabelCarrier ? c : undefined;
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
  if (mode === 'promises') return (cpedOpen ? carrierNow()?.store : undefined) ?? syncStore;
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
    const prev = cpedGet();
    cpedSet(merged(prev instanceof LabelCarrier ? prev.store : syncStore, labels).carrier);
    try {
      return fn(...args);
    } finally {
      cpedSet(prev);
    }
  }
  const store = merged(current(), labels);
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

/**
 * Makes `labels` the labels in force. 'all': for the rest of this synchronous run and the async
 * work it starts. 'promises': inside a labelled scope, for the rest of the scope; outside any,
 * everywhere outside labelled scopes (the thread's base labels). 'sync': everywhere. Never
 * wiped by an upload.
 */
function setLabels(labels) {
  checkLabels(labels);
  const store = intern(labels);
  if (mode === 'promises' && ensureCped() && carrierNow() !== undefined) {
    // Inside a labelled scope, which V8 or wrapWithLabels ends.
    cpedSet(store.carrier);
    return;
  }
  if (mode !== 'all') {
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
  const was = mode;
  if (async === false) mode = 'sync';
  else if (async === 'all' || !cpedPossible) mode = 'all';
  else mode = 'promises';
  if (mode === was) return;
  // Nothing set in the mode before stays in force.
  if (cpedOpen) cpedSet(undefined);
  if (slot !== null) slot[0] = 0;
  syncStore = EMPTY;
  if (storage !== null) storage.disable();
  if (hook !== null) {
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
  configure({ async: v === undefined || v === '' ? true : v === 'all' ? 'all' : v === 'true' || v === '1' });
}

module.exports = { wrapWithLabels, getLabels, setLabels, configure, labelMode };
