'use strict';
// @pyroscope/nodejs's SourceMapper: frames of transpiled or bundled code (TypeScript, esbuild,
// webpack) named after their sources. `SourceMapper.create(dirs)` finds the source maps under
// `dirs` as the peer does: for each JavaScript file (`.js`, `.mjs`, `.cjs`) the map its
// `sourceMappingURL` annotation names (a file, or inline as a `data:` URL), then every
// `*.js.map` file for a generated file still without one (the map's `file`, else its own name
// without `.map`); node_modules and .git are skipped, and directories that are missing or not
// readable are skipped too. The addon parses the maps; `init({ sourceMapper })` puts them in
// force, and from then on a function of a mapped file is named from its source: file, line,
// and the source's name where the map has one (a minified bundle's `c` is `burnCpu` again).

const fs = require('node:fs');
const path = require('node:path');
const native = require('./native');
const { log } = require('./logger');

// The parsed maps (native.SourceMaps) of a mapper.
const maps = Symbol('maps');

// Errors that skip a file or directory instead of failing create() (as the peer's).
const SKIPPED = new Set(['ENOENT', 'EPERM', 'EACCES', 'ELOOP', 'ENOTDIR']);
// The comment that ends a script's last non-empty line, when it is a `//# sourceMappingURL=`.
const ANNOTATION = /^[#@]\s*sourceMappingURL=(\S+?)\s*$/;
const TAIL_BYTES = 4096;

// Adds the scripts and `*.js.map` files under `dir` to `out`.
async function walk(dir, out) {
  let entries;
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if (SKIPPED.has(e.code)) return log('debug', `pyroscope: source maps: skipped ${dir}: ${e.message}`);
    throw e;
  }
  for (const e of entries) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules' && e.name !== '.git' && full !== '/proc') await walk(full, out);
    } else if (e.isFile()) {
      if (/\.[cm]?js\.map$/.test(e.name)) out.maps.push(full);
      else if (/\.[cm]?js$/.test(e.name)) out.scripts.push(full);
    }
  }
}

// The `sourceMappingURL` of `script` (its last non-empty line), or undefined.
async function annotation(script) {
  const fd = await fs.promises.open(script, 'r');
  try {
    const { size } = await fd.stat();
    const n = Math.min(TAIL_BYTES, size);
    const buf = Buffer.alloc(n);
    await fd.read(buf, 0, n, size - n);
    let lines = buf.toString('utf8').split(/\r\n|\n|\r|\u2028|\u2029/);
    while (lines.length > 0 && lines[lines.length - 1].trim() === '') lines.pop();
    // The last line starts before the tail (a long inline map): read it all.
    if (lines.length === 1 && n < size) {
      lines = (await fs.promises.readFile(script, 'utf8')).trimEnd().split(/\r\n|\n|\r|\u2028|\u2029/);
    }
    const last = lines.length > 0 ? lines[lines.length - 1] : '';
    const at = last.indexOf('//');
    if (at < 0) return undefined;
    const comment = last.slice(at + 2);
    const m = /["'`]/.test(comment) ? null : ANNOTATION.exec(comment);
    return m === null ? undefined : m[1];
  } finally {
    await fd.close();
  }
}

// The map a script's annotation names, as { generated, path, text }; null when there is none
// or it cannot be read.
async function annotated(script) {
  let url;
  try {
    url = await annotation(script);
  } catch {
    return null;
  }
  if (url === undefined) return null;
  if (url.startsWith('data:')) {
    const comma = url.indexOf(',');
    if (comma < 0) return null;
    const data = url.slice(comma + 1);
    const text = url.slice(0, comma).endsWith(';base64') ? Buffer.from(data, 'base64').toString('utf8') : decodeURIComponent(data);
    return { generated: script, path: script, text };
  }
  const mapPath = path.resolve(path.dirname(script), url);
  try {
    return { generated: script, path: mapPath, text: await fs.promises.readFile(mapPath, 'utf8') };
  } catch {
    return null;
  }
}

class SourceMapper {
  /**
   * As @pyroscope/nodejs: resolves to a mapper of the source maps under `searchDirs`. With
   * `debug`, maps left out (not parsed, no generated file) are reported through the logger of
   * setLogger().
   * @param {string[]} searchDirs
   * @param {boolean} [debug]
   */
  static async create(searchDirs, debug = false) {
    if (!Array.isArray(searchDirs) || !searchDirs.every((d) => typeof d === 'string')) {
      throw new TypeError('SourceMapper.create(searchDirs): searchDirs must be an array of directory paths');
    }
    const found = { scripts: [], maps: [] };
    for (const dir of searchDirs) {
      try {
        await walk(path.resolve(dir), found);
      } catch (e) {
        throw new Error(`pyroscope: cannot read source maps from ${dir}: ${e.message}`);
      }
    }
    const files = [];
    const used = new Set();
    for (const script of found.scripts) {
      const map = await annotated(script);
      if (map !== null) {
        files.push(map);
        used.add(map.path);
      }
    }
    for (const mapPath of found.maps) {
      if (used.has(mapPath)) continue;
      try {
        files.push({ path: mapPath, text: await fs.promises.readFile(mapPath, 'utf8') });
      } catch (e) {
        if (debug) log('debug', `pyroscope: source maps: cannot read ${mapPath}: ${e.message}`);
      }
    }
    const mapper = new SourceMapper(debug);
    mapper[maps] = native.SourceMaps.parse(files);
    for (const file of mapper[maps].generatedFiles()) mapper.infoMap.set(file, { mapFileDir: path.dirname(file) });
    if (debug) {
      for (const e of mapper[maps].errors) log('debug', `pyroscope: source maps: left out ${e}`);
      log('debug', `pyroscope: ${mapper.infoMap.size} source maps under ${searchDirs.join(', ')}`);
    }
    return mapper;
  }

  constructor(debug = false) {
    /** Generated file (absolute path) -> { mapFileDir }, for each map loaded. */
    this.infoMap = new Map();
    this.debug = debug;
    this[maps] = null;
  }

  /** Whether a source map describes the generated file `inputPath`. */
  hasMappingInfo(inputPath) {
    return this.infoMap.has(path.resolve(inputPath));
  }

  /**
   * `location` ({ file, line, column, name }: 1-based, as V8 reports a function) mapped to its
   * source; the location as given when no map covers it.
   */
  mappingInfo(location) {
    if (this[maps] === null || typeof location?.file !== 'string') return location;
    const m = this[maps].lookup(path.resolve(location.file), location.line ?? 0, location.column ?? 0, location.name ?? '');
    if (m === null || m === undefined) return location;
    return { file: m.file, line: m.line, column: m.column, name: m.name ?? location.name };
  }
}

/**
 * Puts `mapper`'s maps in force for the frames named from now on. False (nothing changes) for
 * a mapper this package did not make.
 */
function activate(mapper) {
  if (!(mapper instanceof SourceMapper)) return false;
  if (mapper[maps] !== null) mapper[maps].activate();
  return true;
}

module.exports = { SourceMapper, activate };
