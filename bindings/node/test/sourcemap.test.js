'use strict';
// SourceMapper: frames of transpiled (tsc) and minified (esbuild) code named after the
// TypeScript source, in the decoded profiles and through mappingInfo().

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { cpuProfiles, total, has, pkg, runProfiled } = require('./helpers');
const { SourceMapper } = require('..');

const dir = path.join(pkg, 'test', 'fixtures', 'sourcemap');
const source = fs.readFileSync(path.join(dir, 'src', 'app.ts'), 'utf8').split('\n');
// 1-based line of the first line of app.ts that contains `text`.
const lineOf = (text) => source.findIndex((l) => l.includes(text)) + 1;

async function profile(script, env = {}) {
  const { receiver: r } = await runProfiled([path.join(dir, script)], env);
  return cpuProfiles(r);
}

for (const build of ['dist', 'min']) {
  test(`frames of ${build}/app.js are named from src/app.ts with the mapper`, async () => {
    const cpu = await profile(`${build}/app.js`);
    const burn = `./test/fixtures/sourcemap/src/app.ts:burnCpu:${lineOf('function burnCpu(')}`;
    const find = `./test/fixtures/sourcemap/src/app.ts:findNearestVehicle:${lineOf('findNearestVehicle(trip')}`;
    const inBurn = (s) => s.frames.some((f) => f.function === burn);
    const all = total(cpu, 'cpu');
    const burnt = total(cpu, 'cpu', inBurn);
    assert.ok(burnt > 0.5 * all, `${burn}: ${burnt} of ${all} ns; functions seen: ${[...new Set(cpu.flatMap((p) => p.samples.flatMap((s) => s.frames.map((f) => f.function))))].join(', ')}`);
    const sample = cpu.flatMap((p) => p.samples).find(inBurn);
    const names = sample.frames.map((f) => f.function);
    assert.ok(names.indexOf(burn) < names.indexOf(find), `stack: ${names.join(' < ')}`);
    const frame = sample.frames.find((f) => f.function === burn);
    assert.equal(frame.file, path.join(dir, 'src', 'app.ts'));
    assert.equal(frame.line, lineOf('function burnCpu('));
    assert.equal(total(cpu, 'cpu', has(new RegExp(`/${build}/app\\.js:`))), 0, 'a frame still names the generated file');
  });
}

test('without a mapper, the minified bundle keeps its generated names', async () => {
  const cpu = await profile('min/app.js', { NO_SOURCE_MAPS: '1' });
  assert.equal(total(cpu, 'cpu', has(/src\/app\.ts:/)), 0);
  // esbuild's name for burnCpu: the function whose loop calls Math.sqrt.
  const [, minified] = fs.readFileSync(path.join(dir, 'min', 'app.js'), 'utf8').match(/function (\w+)\(\w+\)\{[^}]*Math\.sqrt/);
  const name = new RegExp(`^\\./test/fixtures/sourcemap/min/app\\.js:${minified}:1$`);
  assert.ok(total(cpu, 'cpu', has(name)) > 0, `no samples in the minified burnCpu (${minified})`);
});

test('fallback mode (V8\'s own sampler) maps its frames too', async () => {
  const cpu = await profile('dist/app.js', { PYROSCOPE_NODE_FALLBACK: '1' });
  const burn = `./test/fixtures/sourcemap/src/app.ts:burnCpu:${lineOf('function burnCpu(')}`;
  assert.ok(total(cpu, 'cpu', (s) => s.frames.some((f) => f.function === burn)) > 0, `no samples in ${burn}`);
  assert.equal(total(cpu, 'cpu', has(/\/dist\/app\.js:/)), 0, 'a frame still names the generated file');
});

test('mappingInfo maps a generated position and leaves others as given', async () => {
  const mapper = await SourceMapper.create([dir]);
  assert.ok(mapper.hasMappingInfo(path.join(dir, 'dist', 'app.js')));
  assert.ok(!mapper.hasMappingInfo(path.join(dir, 'src', 'app.ts')));
  const min = fs.readFileSync(path.join(dir, 'min', 'app.js'), 'utf8');
  const column = min.indexOf('findNearestVehicle(') + 'findNearestVehicle('.length;
  const m = mapper.mappingInfo({ file: path.join(dir, 'min', 'app.js'), line: 1, column, name: 'findNearestVehicle' });
  assert.equal(m.file, path.join(dir, 'src', 'app.ts'));
  assert.equal(m.line, lineOf('findNearestVehicle(trip'));
  assert.equal(m.name, 'findNearestVehicle');
  const elsewhere = { file: path.join(pkg, 'index.js'), line: 3, column: 1, name: 'x' };
  assert.deepEqual(mapper.mappingInfo(elsewhere), elsewhere);
});

test('create() skips missing directories and files that are not source maps', async () => {
  const mapper = await SourceMapper.create([path.join(dir, 'no-such-dir'), dir]);
  assert.ok(mapper.hasMappingInfo(path.join(dir, 'dist', 'app.js')));
  await assert.rejects(SourceMapper.create('dist'), TypeError);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-maps-'));
  try {
    fs.writeFileSync(path.join(tmp, 'broken.js'), 'x();\n');
    fs.writeFileSync(path.join(tmp, 'broken.js.map'), '{"version": 3, "mappings": ');
    fs.writeFileSync(path.join(tmp, 'orphan.js.map'), fs.readFileSync(path.join(dir, 'dist', 'app.js.map')));
    fs.copyFileSync(path.join(dir, 'dist', 'app.js'), path.join(tmp, 'app.js'));
    fs.copyFileSync(path.join(dir, 'dist', 'app.js.map'), path.join(tmp, 'app.js.map'));
    const mapper = await SourceMapper.create([tmp]);
    // orphan.js.map names app.js as its file, which app.js.map (its annotation) has already.
    assert.deepEqual([...mapper.infoMap.keys()], [path.join(tmp, 'app.js')]);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('maps named by a script\'s annotation are found: inline data: URLs and other names', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-maps-'));
  try {
    const script = fs.readFileSync(path.join(dir, 'dist', 'app.js'), 'utf8').replace(/\/\/# sourceMappingURL=.*$/m, '');
    const map = fs.readFileSync(path.join(dir, 'dist', 'app.js.map'));
    fs.mkdirSync(path.join(tmp, 'inline'));
    fs.writeFileSync(path.join(tmp, 'inline', 'app.js'), `${script}//# sourceMappingURL=data:application/json;charset=utf-8;base64,${map.toString('base64')}\n\n`);
    fs.mkdirSync(path.join(tmp, 'out', 'maps'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'out', 'bundle.js'), `${script}//# sourceMappingURL=maps/b.map`);
    fs.writeFileSync(path.join(tmp, 'out', 'maps', 'b.map'), map);
    const mapper = await SourceMapper.create([tmp]);
    const line = script.split('\n').findIndex((l) => l.includes('function burnCpu(')) + 1;
    const column = script.split('\n')[line - 1].indexOf('(') + 1;
    for (const [generated, source] of [
      [path.join(tmp, 'inline', 'app.js'), path.join(tmp, 'src', 'app.ts')],
      [path.join(tmp, 'out', 'bundle.js'), path.join(tmp, 'out', 'src', 'app.ts')],
    ]) {
      assert.ok(mapper.hasMappingInfo(generated), `no map for ${generated}: ${[...mapper.infoMap.keys()]}`);
      const m = mapper.mappingInfo({ file: generated, line, column, name: 'burnCpu' });
      assert.deepEqual([m.file, m.line, m.name], [source, lineOf('function burnCpu('), 'burnCpu']);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
