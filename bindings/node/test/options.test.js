'use strict';
// init() options and PYROSCOPE_* variables as the server sees them: credentials and tenant in
// the request, tags on the series, the sampling, heap sampling and upload periods, and @pyroscope/nodejs's
// shortenPaths and stripFilenames on the frames of an app and of a dependency in node_modules.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { cpuProfiles, total, pkg, runProfiled } = require('./helpers');

const cpuProfilesOf = (got) => got.filter((p) => p.sample_types.some(([t]) => t === 'cpu'));

async function profiles(env, options = {}) {
  const { receiver: r } = await runProfiled(['test/fixtures/options-app.js'], { OPTIONS: JSON.stringify(options), ...env });
  assert.ok(r.profiles.length > 0, 'no profile received');
  return r.profiles;
}

test('authToken and tenantID reach every request; tags and runtime labels every series', async () => {
  const got = await profiles({}, { appName: 'opts', authToken: 'tok-1', tenantID: 'team-a', tags: { region: 'eu-north', shard: 3 } });
  for (const p of got) {
    assert.equal(p.headers.authorization, 'Bearer tok-1');
    assert.equal(p.headers['x-scope-orgid'], 'team-a');
    assert.equal(p.labels.service_name, 'opts');
    assert.equal(p.labels.region, 'eu-north');
    assert.equal(p.labels.shard, '3');
    assert.equal(p.labels['otel.scope.name'], 'com.grafana.pyroscope/nodejs');
    assert.equal(p.labels['process.runtime.name'], 'nodejs');
    assert.equal(p.labels['process.runtime.version'], process.versions.node);
  }
});

test('basicAuthUser/basicAuthPassword send Basic credentials; PYROSCOPE_AUTH_TOKEN a bearer token', async () => {
  const basic = await profiles({}, { appName: 'opts', basicAuthUser: 'ann', basicAuthPassword: 's3cret' });
  const expected = `Basic ${Buffer.from('ann:s3cret').toString('base64')}`;
  for (const p of basic) assert.equal(p.headers.authorization, expected);
  const bearer = await profiles({ PYROSCOPE_AUTH_TOKEN: 'tok-env' }, { appName: 'opts' });
  for (const p of bearer) {
    assert.equal(p.headers.authorization, 'Bearer tok-env');
    assert.equal(p.headers['x-scope-orgid'], undefined);
  }
});

test('heap.samplingIntervalBytes, or PYROSCOPE_HEAP_SAMPLING_INTERVAL_BYTES, is the heap profile period (512 KiB by default)', async () => {
  const heapPeriods = (got) => got.filter((p) => p.sample_types.some(([t]) => t === 'inuse_space')).map((p) => p.period);
  const byDefault = await profiles({}, { appName: 'opts' });
  assert.ok(heapPeriods(byDefault).length > 0, 'no heap profile');
  for (const period of heapPeriods(byDefault)) assert.equal(period, 524288);
  const fromConfig = await profiles({}, { appName: 'opts', heap: { samplingIntervalBytes: 65536 } });
  assert.ok(heapPeriods(fromConfig).length > 0, 'no heap profile');
  for (const period of heapPeriods(fromConfig)) assert.equal(period, 65536);
  const fromEnv = await profiles({ PYROSCOPE_HEAP_SAMPLING_INTERVAL_BYTES: '131072' }, { appName: 'opts' });
  assert.ok(heapPeriods(fromEnv).length > 0, 'no heap profile');
  for (const period of heapPeriods(fromEnv)) assert.equal(period, 131072);
});

test('wall.samplingIntervalMicros, or PYROSCOPE_WALL_SAMPLING_INTERVAL_MICROS, is the sampling period', async () => {
  const periods = (got) => [...new Set(cpuProfilesOf(got).map((p) => p.period))];
  assert.deepEqual(periods(await profiles({}, { appName: 'opts', wall: { samplingIntervalMicros: 20000 } })), [20e6]);
  assert.deepEqual(periods(await profiles({ PYROSCOPE_WALL_SAMPLING_INTERVAL_MICROS: '5000' }, { appName: 'opts' })), [5e6]);
  assert.deepEqual(periods(await profiles({}, { appName: 'opts' })), [10e6]);
});

test('flushIntervalMs, or PYROSCOPE_FLUSH_INTERVAL_MS, is the upload period', async () => {
  // Work until two windows have closed: each lasts a second (more by what a busy machine delays
  // the collector, never 60 s). The last, at exit, may hold no sample and not be sent.
  const windows = (got) => cpuProfilesOf(got).sort((a, b) => a.time_nanos - b.time_nanos);
  const oneSecond = [
    await profiles({ WORK_WINDOWS: '2' }, { appName: 'opts', flushIntervalMs: 1000 }),
    await profiles({ WORK_WINDOWS: '2', PYROSCOPE_FLUSH_INTERVAL_MS: '1000' }, { appName: 'opts' }),
  ];
  for (const got of oneSecond) {
    const w = windows(got);
    assert.ok(w.length >= 2, `windows: ${w.length}`);
    for (const p of w.slice(0, 2)) {
      assert.ok(p.duration_nanos >= 0.95e9 && p.duration_nanos < 10e9, `a window lasted ${p.duration_nanos} ns`);
    }
  }
  // 2.5 s of work under the default of 60 s: one window, sent at exit.
  assert.equal(windows(await profiles({ WORK_MS: '2500' }, { appName: 'opts' })).length, 1);
});

// An app with a dependency: app.js's spinApp and node_modules/dep/index.js's spinDep each burn
// CPU for 400 ms.
function appWithDependency() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-paths-'));
  const dep = path.join(dir, 'node_modules', 'dep');
  fs.mkdirSync(dep, { recursive: true });
  const spin = (name) =>
    `function ${name}(ms) {\n  const end = Date.now() + ms;\n  let x = 0;\n  while (Date.now() < end) x += Math.sqrt(x + 1);\n  return x;\n}\n`;
  fs.writeFileSync(path.join(dep, 'index.js'), `'use strict';\n${spin('spinDep')}module.exports = { spinDep };\n`);
  fs.writeFileSync(
    path.join(dir, 'app.js'),
    `'use strict';\nconst pyroscope = require(${JSON.stringify(pkg)});\n` +
      "const { spinDep } = require('dep');\n" +
      `${spin('spinApp')}pyroscope.init(JSON.parse(process.env.OPTIONS || '{}'));\npyroscope.start();\n` +
      'spinApp(400);\nspinDep(400);\n',
  );
  return { dir, app: path.join(dir, 'app.js'), dep: path.join(dep, 'index.js') };
}

/** The (function, file) of the frames named spinApp and spinDep in an app's CPU profiles. */
async function pathsOf(env, options) {
  const { dir, app, dep } = appWithDependency();
  try {
    const { receiver } = await runProfiled([app], { OPTIONS: JSON.stringify({ appName: 'paths', ...options }), ...env }, { cwd: dir });
    const cpu = cpuProfiles(receiver);
    const frames = (name) => {
      const seen = new Map();
      for (const p of cpu) for (const s of p.samples) for (const f of s.frames) if (new RegExp(`:${name}:\\d+$`).test(f.function)) seen.set(`${f.function}|${f.file}`, f);
      return [...seen.values()];
    };
    const inFn = (name) => total(cpu, 'cpu', (s) => s.frames.some((f) => new RegExp(`:${name}:\\d+$`).test(f.function)));
    assert.ok(inFn('spinApp') > 0 && inFn('spinDep') > 0, `samples in spinApp ${inFn('spinApp')} ns, spinDep ${inFn('spinDep')} ns`);
    return { app, dep, spinApp: frames('spinApp'), spinDep: frames('spinDep') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('frames name files relative to the working directory, with their full path as the file', async () => {
  const got = await pathsOf({}, {});
  assert.deepEqual(got.spinApp.map((f) => [f.function, f.file]), [['./app.js:spinApp:4', got.app]]);
  assert.deepEqual(got.spinDep.map((f) => [f.function, f.file]), [['./node_modules/dep/index.js:spinDep:2', got.dep]]);
});

test("shortenPaths names a dependency's frames by its path in its package; stripFilenames 'dependencies' drops their file", async () => {
  const got = await pathsOf({}, { shortenPaths: true, stripFilenames: 'dependencies' });
  assert.deepEqual(got.spinApp.map((f) => [f.function, f.file]), [['./app.js:spinApp:4', got.app]]);
  assert.deepEqual(got.spinDep.map((f) => [f.function, f.file]), [['dep/index.js:spinDep:2', '']]);
});

test("PYROSCOPE_STRIP_FILENAMES=all drops every frame's file and keeps the names", async () => {
  const got = await pathsOf({ PYROSCOPE_STRIP_FILENAMES: 'all' }, {});
  assert.deepEqual(got.spinApp.map((f) => [f.function, f.file]), [['./app.js:spinApp:4', '']]);
  assert.deepEqual(got.spinDep.map((f) => [f.function, f.file]), [['./node_modules/dep/index.js:spinDep:2', '']]);
  const shortened = await pathsOf({ PYROSCOPE_SHORTEN_PATHS: 'true' }, {});
  assert.deepEqual(shortened.spinDep.map((f) => [f.function, f.file]), [['dep/index.js:spinDep:2', shortened.dep]]);
});
