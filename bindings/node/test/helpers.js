'use strict';
// Runs a script under the profiler against the strict loopback receiver
// (tests/receiver, `pyroscope-receiver`), which decodes every pprof it accepts; the tests
// read the decoded profiles.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const repo = path.join(__dirname, '..', '..', '..');
const pkg = path.join(__dirname, '..');
const receiverBin = process.env.PYROSCOPE_RECEIVER || path.join(repo, 'target', 'debug', 'pyroscope-receiver');

/** Starts a receiver; resolves to { url, profiles, rejected, close() }. */
function startReceiver(mode) {
  return new Promise((resolve, reject) => {
    const args = mode ? ['--mode', mode] : [];
    const child = spawn(receiverBin, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    const profiles = [];
    const rejected = [];
    let url = null;
    const exited = new Promise((r) => child.on('exit', r));
    child.on('error', reject);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (url === null) {
        url = line.trim();
        resolve({
          url,
          profiles,
          rejected,
          async close() {
            child.stdin.end();
            await exited;
          },
        });
        return;
      }
      const msg = JSON.parse(line);
      msg.receivedAt = Date.now();
      if (msg.rejected !== undefined) rejected.push(msg);
      else profiles.push(msg);
    });
  });
}

/**
 * Runs `node <args>` with `env` added, and resolves when it exits to
 * { code, signal, stdout, stderr, ms, exitedAt (Date.now() at exit) }. Bounded by
 * `timeoutMs` (then killed).
 */
function run(args, env = {}, { timeoutMs = 60000, cwd = pkg } = {}) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Number(process.hrtime.bigint() - t0) / 1e6, exitedAt: Date.now() });
    });
  });
}

/**
 * Starts `node <args>` in the package's folder (`env` added, stdin piped, stderr shown) for a
 * test that talks with it: { child, exited (resolves to { code, signal } once its output is
 * read), lines (its stdout lines so far), line(re) (resolves to its first stdout line that
 * matches `re`, or null if it ends without one) }.
 */
function spawnFixture(args, env = {}) {
  const child = spawn(process.execPath, args, { cwd: pkg, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  const lines = [];
  let waiting = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    lines.push(l);
    waiting = waiting.filter((w) => !(w.re.test(l) && (w.resolve(l), true)));
  });
  const line = (re) => {
    const seen = lines.find((l) => re.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    const found = new Promise((resolve) => waiting.push({ re, resolve }));
    return Promise.race([found, exited.then(() => lines.find((l) => re.test(l)) ?? null)]);
  };
  return { child, exited, lines, line };
}

/**
 * Runs `node <args>` against a receiver of its own (PYROSCOPE_SERVER_ADDRESS, `env` added) and
 * checks that it exited 0; resolves to { res (as run's), receiver } once the receiver has
 * printed all it got.
 */
async function runProfiled(args, env = {}, options = {}) {
  const receiver = await startReceiver();
  const res = await run(args, { PYROSCOPE_SERVER_ADDRESS: receiver.url, ...env }, options);
  await receiver.close();
  assert.equal(res.code, 0, res.stderr);
  return { res, receiver };
}

/**
 * Decodes a pprof (gzipped or not) with the receiver's decoder (`--decode`), which checks
 * the pprof as strictly as it checks uploads: the profile as the receiver prints profiles.
 */
function decodePprof(bytes) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-pprof-')), 'profile.pb.gz');
  fs.writeFileSync(file, bytes);
  const res = spawnSync(receiverBin, ['--decode', file], { encoding: 'utf8' });
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  if (res.status !== 0) throw new Error(`the pprof does not decode: ${res.stderr}`);
  return JSON.parse(res.stdout);
}

/** Sample type index of `type` in a decoded profile. */
function typeIndex(profile, type) {
  return profile.sample_types.findIndex(([t]) => t === type);
}

/** CPU profiles (`cpu` nanoseconds) of the app. */
function cpuProfiles(receiver) {
  return receiver.profiles.filter((p) => typeIndex(p, 'cpu') >= 0);
}

/** Sum of `type` over samples of `profiles` that pass `keep(sample)`. */
function total(profiles, type, keep = () => true) {
  let sum = 0;
  for (const p of profiles) {
    const i = typeIndex(p, type);
    if (i < 0) continue;
    for (const s of p.samples) if (keep(s)) sum += s.values[i];
  }
  return sum;
}

/** Whether a sample's stack has a frame whose function matches `re`. */
const has = (re) => (s) => s.frames.some((f) => re.test(f.function));

/**
 * Asserts that `sampled` CPU nanoseconds are within `low`..`high` times the thread's own CPU
 * clock `truth`, give or take two sampling periods (`periodNs`, 10 ms at the default 100 Hz):
 * the sample that falls due as a function ends goes to what runs next, and a timer that expires
 * while its thread waits for a core comes late, in the next function. The same bound as the
 * core's and the Python package's accuracy tests.
 */
function cpuWithin(what, sampled, truth, low, high, periodNs = 1e7) {
  const ms = (ns) => (ns / 1e6).toFixed(1);
  const detail = `${what}: sampled ${ms(sampled)} ms of ${ms(truth)} ms of CPU (ratio ${(sampled / truth).toFixed(3)})`;
  assert.ok(sampled >= truth * low - 2 * periodNs, `${detail}: less than ${low}x`);
  assert.ok(sampled <= truth * high + 2 * periodNs, `${detail}: more than ${high}x`);
}

module.exports = { startReceiver, run, runProfiled, spawnFixture, decodePprof, cpuProfiles, total, cpuWithin, has, pkg, repo };
