'use strict';
// One measured run of the Node benchmark: a child process of bench.py.
//
//   node workload.js '{"sdk": "none"|"ours"|"peer", ...}'
//
// Settings (a JSON object, see bench.py): `work` ("cpu": function calls, objects, JSON and
// strings on the main thread; "await": concurrent async requests of many awaits each),
// `units` (cpu: units of work; await: requests), `labels` (await: each request runs inside
// the SDK's `wrapWithLabels`), `pkg` (the SDK's directory, required as users require it),
// `server` (URL), `asyncLabels` (ours: false or 'all'), `end` ("stop":
// `await stop()` after the work, timed, and `await null` there with no profiler, so that both
// runs end the same way; "exit": the script just ends), `warmup` (seconds; bench.py sets it).
//
// Prints one JSON line: `cpu` (the process's user+sys CPU seconds over the measured phase,
// every thread included), `wall` (its seconds), `stop` (seconds inside `await stop()`, or
// null), `work_end` (CLOCK_MONOTONIC seconds as the work ended, comparable with the parent's
// time.monotonic()), `awaits` (awaits in the measured phase). The parent takes peak RSS and
// the whole process's CPU from its rusage. Nothing here depends on the profiles' content.

const cfg = JSON.parse(process.argv[2]);

// CLOCK_MONOTONIC seconds (libuv's hrtime), as Python's time.monotonic() in the parent.
const now = () => Number(process.hrtime.bigint()) / 1e9;
const cpuNow = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

let sdk = null;
if (cfg.sdk !== 'none') {
  const mod = require(cfg.pkg);
  sdk = mod.default ?? mod;
  // Both SDKs sample at 100 Hz by default (wall.samplingIntervalMicros 10000).
  const config = { appName: 'node-bench', serverAddress: cfg.server, flushIntervalMs: 10000 };
  if (cfg.asyncLabels !== undefined) config.asyncLabels = cfg.asyncLabels;
  sdk.init(config);
  sdk.start();
}

// ---- the CPU-bound unit: about a millisecond of calls, objects, JSON and strings ----

function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

function cpuUnit(i) {
  let acc = fib(20);
  const items = [];
  for (let k = 0; k < 160; k++) {
    items.push({ id: i * 160 + k, name: `item-${i}-${k}`, tags: ['a', 'b', String(k & 7)], score: (k * 31 + i) % 97 });
  }
  const text = JSON.stringify(items);
  for (const o of JSON.parse(text)) acc += o.score;
  const words = text
    .split(',')
    .map((w) => w.toUpperCase())
    .filter((w) => w.length > 10);
  return acc + words.join('|').length;
}

// ---- the await-heavy unit: a request of AWAITS_PER_REQUEST small async steps ----

const AWAITS_PER_REQUEST = 200;
const CONCURRENCY = 32;

const cache = new Map();

async function lookup(i, k) {
  // A little work between awaits, as a handler that calls small async helpers: a key, a
  // cached record, a small serialized reply.
  const key = `user:${(i * 7 + k) & 255}`;
  let record = cache.get(key);
  if (record === undefined) {
    record = { key, hits: 0, region: k & 7 };
    cache.set(key, record);
  }
  record.hits++;
  return JSON.stringify({ key, hits: record.hits, region: record.region }).length;
}

async function request(i) {
  let s = 0;
  for (let k = 0; k < AWAITS_PER_REQUEST; k++) s += await lookup(i, k);
  return s;
}

const routes = ['/car', '/bike', '/scooter', '/walk'];

// One request, labelled by the SDK's wrapWithLabels when `labels` is on. Ours returns what the
// function returns (its Promise); @pyroscope/nodejs's returns nothing, so its Promise is taken
// from inside (the peer's labels cover the request's synchronous start only).
function labelled(i) {
  if (!cfg.labels || sdk === null) return request(i);
  const labels = { route: routes[i & 3] };
  if (cfg.sdk === 'ours') return sdk.wrapWithLabels(labels, request, i);
  let p;
  sdk.wrapWithLabels(labels, () => {
    p = request(i);
  });
  return p;
}

async function awaitWork(units) {
  let sum = 0;
  for (let i = 0; i < units; i += CONCURRENCY) {
    const batch = [];
    for (let j = i; j < Math.min(units, i + CONCURRENCY); j++) batch.push(labelled(j));
    for (const v of await Promise.all(batch)) sum += v;
  }
  return sum;
}

let sink = 0;

async function main() {
  const cpuWork = cfg.work === 'cpu';
  // Warm up (not measured): the JIT, and the profilers' start-up work (ours names the code V8
  // compiled before its start once the main thread has used 0.5 s of CPU time).
  const deadline = now() + (cfg.warmup ?? 1.0);
  for (let i = 0; now() < deadline; i++) sink += cpuWork ? cpuUnit(i) : await awaitWork(CONCURRENCY);

  const c0 = cpuNow();
  const t0 = now();
  if (cpuWork) {
    for (let i = 0; i < cfg.units; i++) sink += cpuUnit(i);
  } else {
    sink += await awaitWork(cfg.units);
  }
  const t1 = now();
  const c1 = cpuNow();

  let stop = null;
  if ((cfg.end ?? 'stop') === 'stop') {
    if (sdk !== null) {
      const s = now();
      await sdk.stop();
      stop = now() - s;
    } else {
      // The same shape without a profiler: the rest of main() runs as a continuation.
      await null;
    }
  }
  const out = {
    cpu: c1 - c0,
    wall: t1 - t0,
    stop,
    work_end: t1,
    awaits: cpuWork ? 0 : cfg.units * AWAITS_PER_REQUEST,
    sink: sink % 1000,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exitCode = 1;
});
