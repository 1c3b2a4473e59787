'use strict';
// The API's surface as @pyroscope/nodejs 0.6 has it: init's checks and messages, the
// CommonJS and ESM shapes, wrapWithLabels' return values and errors, SourceMapper.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { run } = require('./helpers');

for (const k of Object.keys(process.env)) if (k.startsWith('PYROSCOPE_')) delete process.env[k];

// By name, as users require it (the package refers to itself through its exports).
const pyroscope = require('pyroscope-profiler');
const { init } = pyroscope;

const FULL_SET = [
  'SourceMapper',
  'expressMiddleware',
  'fastifyMiddleware',
  'init',
  'getWallLabels',
  'setWallLabels',
  'getLabels',
  'setLabels',
  'wrapWithLabels',
  'start',
  'startHeapProfiling',
  'startWallProfiling',
  'startCpuProfiling',
  'stop',
  'stopHeapProfiling',
  'stopWallProfiling',
  'stopCpuProfiling',
  'setLogger',
];

test('init throws the messages of @pyroscope/nodejs for the options it checks', () => {
  assert.throws(() => init('app'), { message: 'Expecting an object config' });
  assert.throws(() => init(null), { message: 'Expecting an object config' });
  for (const c of ['{', '}', ',', '=']) {
    assert.throws(() => init({ appName: `my${c}app` }), {
      message: "Invalid config:\n\nappName must not contain '{', '}', ',', or '=' characters",
    });
    assert.throws(() => init({ appName: 'my-app', tags: { [`bad${c}key`]: 'value' } }), {
      message: `Invalid config:\n\ntag key "bad${c}key" must not contain '{', '}', ',', or '=' characters`,
    });
    assert.throws(() => init({ appName: 'my-app', tags: { key: `bad${c}value` } }), {
      message: `Invalid config:\n\ntag value "bad${c}value" for key "key" must not contain '{', '}', ',', or '=' characters`,
    });
  }
  assert.throws(() => init({ appName: 'my-app', tags: { key: true } }), {
    message: 'Invalid config:\n\ntag value "true" for key "key" must be a string or number',
  });
  // Every problem at once, in the peer's order.
  assert.throws(
    () =>
      init({
        appName: 7,
        tags: 'region=eu',
        authToken: 1,
        flushIntervalMs: 1.5,
        heap: { samplingIntervalBytes: '1' },
        serverAddress: 4040,
        wall: { samplingIntervalMicros: 0.5 },
        stripFilenames: 'some',
        shortenPaths: 'yes',
        asyncLabels: 'callbacks',
      }),
    {
      message: [
        'Invalid config:',
        '',
        'Expecting a config with string appName',
        'Expecting a config with object tags',
        'Expecting a config with string auth token',
        'Expecting a config with integer flush interval',
        'Expecting a config with valid memory options',
        'Expecting a config with string serverAddress',
        'Expecting a config with valid wall options',
        "Expecting a config with stripFilenames set to 'all' or 'dependencies'",
        'Expecting a config with boolean shortenPaths',
        "Expecting a config with asyncLabels set to true, false or 'all'",
      ].join('\n'),
    },
  );
  assert.doesNotThrow(() => init({ appName: 'my-app', tags: { region: 'us-east-1', replica: 3 } }));
});

test('init also refuses what the core cannot use: bad URL, empty name, intervals out of range', () => {
  const ok = { appName: 'app', serverAddress: 'http://127.0.0.1:4040' };
  assert.throws(() => init({ ...ok, serverAddress: 'ftp://127.0.0.1:4040' }), /^Error: Invalid config: invalid server address "ftp:/);
  assert.throws(() => init({ ...ok, serverAddress: 'not a url' }), /^Error: Invalid config: invalid server address "not a url"/);
  assert.throws(() => init({ ...ok, appName: '' }), {
    message: 'Invalid config: appName is empty: pass init({ appName: ... }) or set PYROSCOPE_APPLICATION_NAME',
  });
  assert.throws(() => init({ serverAddress: ok.serverAddress }), /^Error: Invalid config: appName is empty/);
  for (const ms of [0, 999, 3600001, 1e12]) {
    assert.throws(() => init({ ...ok, flushIntervalMs: ms }), /^Error: Invalid config: flushIntervalMs/, String(ms));
  }
  for (const us of [0, 999, 1000001, 1e12]) {
    assert.throws(
      () => init({ ...ok, wall: { samplingIntervalMicros: us } }),
      /^Error: Invalid config: wall\.samplingIntervalMicros .* must be between 1000 \(1 kHz\) and 1000000 \(1 Hz\)$/,
      String(us),
    );
  }
  assert.doesNotThrow(() => init({ ...ok, flushIntervalMs: 1000, wall: { samplingIntervalMicros: 1000 } }));
});

test('CommonJS: the named functions and a default with the full set', () => {
  const cjs = require('pyroscope-profiler');
  for (const name of ['init', 'start', 'stop', 'wrapWithLabels']) assert.equal(typeof cjs[name], 'function', name);
  assert.deepEqual(Object.keys(cjs.default).sort(), [...FULL_SET].sort());
  for (const name of FULL_SET) assert.equal(typeof cjs.default[name], 'function', name);
  assert.equal(cjs.default.init, cjs.init);
  assert.equal(require(path.join(__dirname, '..')), cjs);
});

test('ESM: default and named imports', async () => {
  const res = await run(['test/fixtures/esm.mjs']);
  assert.equal(res.code, 0, res.stderr);
  const got = JSON.parse(res.stdout);
  assert.deepEqual(got.named, ['function', 'function', 'function', 'function']);
  assert.deepEqual(got.defaultKeys, [...FULL_SET].sort());
  assert.equal(got.sameInit, true);
  assert.equal(got.wrapped, 42);
});

test('loading the addon leaves none of node\'s pages that it read for its imports mapped', async () => {
  // Resolving the addon's imports reads node's symbol tables: 336 pages (1.3 MiB) stay mapped
  // without the release. A page or a few read by node's own threads meanwhile are tolerated.
  const res = await run(['test/fixtures/load-pages.js']);
  assert.equal(res.code, 0, res.stderr);
  const got = JSON.parse(res.stdout);
  assert.ok(got.before > 100, `pagemap read: ${res.stdout}`);
  assert.ok(got.added <= 16, `node's pages mapped by the load: ${got.added}`);
});

test('wrapWithLabels returns what fn returns and lets its errors through untouched', async () => {
  const { wrapWithLabels, getLabels } = pyroscope.default;
  const self = {};
  assert.equal(
    wrapWithLabels({ a: 1 }, function (x, y) {
      assert.deepEqual(getLabels(), { a: 1 });
      return x + y;
    }, 2, 3),
    5,
  );
  const value = { v: 1 };
  assert.equal(wrapWithLabels({ a: 1 }, () => value), value);
  assert.equal(wrapWithLabels({ a: 1 }, () => undefined), undefined);

  const promise = wrapWithLabels({ a: 'async' }, async (x) => {
    await new Promise((r) => setImmediate(r));
    return { x, labels: getLabels() };
  }, self);
  assert.ok(promise instanceof Promise);
  assert.deepEqual(getLabels(), {}, 'labels leaked out of wrapWithLabels');
  const got = await promise;
  assert.equal(got.x, self);
  assert.deepEqual(got.labels, { a: 'async' });

  const thrown = new RangeError('boom');
  assert.throws(() => wrapWithLabels({ a: 1 }, () => {
    throw thrown;
  }), (e) => e === thrown);
  assert.deepEqual(getLabels(), {});
  const odd = { notAnError: true };
  assert.throws(() => wrapWithLabels({ a: 1 }, () => {
    throw odd;
  }), (e) => e === odd);

  const rejected = new TypeError('later');
  await assert.rejects(wrapWithLabels({ a: 1 }, async () => {
    await null;
    throw rejected;
  }), (e) => e === rejected);
  assert.deepEqual(getLabels(), {});
});

test('wrapWithLabels: nested labels add up; one set whatever their order, type or how many sets came before', () => {
  const { wrapWithLabels, getLabels } = pyroscope.default;
  const native = require('../lib/native');
  // The id a sample taken inside would carry, and the labels getLabels gives there.
  const inside = (labels) => wrapWithLabels(labels, () => [native.sampledLabelId(), getLabels()]);
  const [id, labels] = inside({ region: 'eu', vehicle: 'car' });
  assert.notEqual(id, 0);
  assert.deepEqual(labels, { region: 'eu', vehicle: 'car' });
  assert.equal(inside({ vehicle: 'car', region: 'eu' })[0], id);
  const nested = wrapWithLabels({ region: 'eu' }, () => wrapWithLabels({ vehicle: 'bike' }, () => inside({ vehicle: 'car' })));
  assert.deepEqual(nested, [id, { region: 'eu', vehicle: 'car' }]);
  assert.equal(native.sampledLabelId(), 0, 'labels left in force');
  // Numbers read as their strings; other values by their string too.
  assert.equal(inside({ n: 7 })[0], inside({ n: '7' })[0]);
  assert.equal(inside({ o: { toString: () => 'x' } })[0], inside({ o: 'x' })[0]);
  // A value that could read as a key and a value elsewhere is still its own set.
  assert.notEqual(inside({ a: 'b' })[0], inside({ a: 'b', c: 'd' })[0]);
  // Thousands of distinct sets (past the bound of the sets kept per set in force): each right.
  for (let i = 0; i < 3000; i++) {
    const [got, seen] = wrapWithLabels({ region: 'us' }, () => inside({ req: `r${i}` }));
    assert.notEqual(got, 0);
    assert.deepEqual(seen, { region: 'us', req: `r${i}` });
  }
  assert.equal(inside({ region: 'eu', vehicle: 'car' })[0], id);
});

test('SourceMapper: the peer\'s create(dirs) runs, missing directories skipped', async () => {
  const { SourceMapper } = pyroscope.default;
  const mapper = await SourceMapper.create([__dirname, '/does/not/exist']);
  assert.ok(mapper instanceof SourceMapper);
  const loc = { file: '/app/dist/index.js', name: 'handler', line: 10, column: 4 };
  assert.equal(mapper.hasMappingInfo(loc.file), false);
  assert.equal(mapper.mappingInfo(loc), loc);
  await assert.rejects(SourceMapper.create('dist'), TypeError);
  assert.doesNotThrow(() => init({ appName: 'mapped', sourceMapper: mapper }));
});

test('an addon built for another Node, or not built, is refused with what to run', () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-abi-'));
  try {
    fs.mkdirSync(path.join(dir, 'lib'));
    fs.copyFileSync(path.join(__dirname, '..', 'lib', 'native.js'), path.join(dir, 'lib', 'native.js'));
    const loader = path.join(dir, 'lib', 'native.js');
    assert.throws(() => require(loader), /the native addon is not built .*index\.node is missing.*scripts\/build\.js/);
    fs.writeFileSync(path.join(dir, 'index.node'), '');
    fs.writeFileSync(path.join(dir, 'build-info.json'), JSON.stringify({ modules: '1', node: 'v0.1.0' }));
    const message = `built for Node v0.1.0 (module ABI 1) and this is Node ${process.version} (module ABI ${process.versions.modules})`;
    assert.throws(() => require(loader), (e) => e.message.includes(message) && e.message.includes('scripts/build.js'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
