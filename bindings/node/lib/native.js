'use strict';
// Loads the native addon (index.node, built at install time by scripts/build.js) after
// checking that it was built for this Node: its V8 part is tied to one module ABI.

const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const addon = path.join(root, 'index.node');
const info = path.join(root, 'build-info.json');

// The pages of the node executable's read-only mappings present now, as
// [{ start, entries: /proc/self/pagemap entries }]: loading the addon maps more of node's
// symbol tables (it resolves its imports there), which the addon gives back once loaded
// (src/pages.rs). Empty where /proc cannot be read.
function executablePages() {
  if (process.platform !== 'linux') return [];
  try {
    const exe = fs.readlinkSync('/proc/self/exe');
    const fd = fs.openSync('/proc/self/pagemap', 'r');
    try {
      const out = [];
      for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
        const m = /^([0-9a-f]+)-([0-9a-f]+) r--p \S+ \S+ \S+ +(.*)$/.exec(line);
        if (m === null || m[3] !== exe) continue;
        const start = parseInt(m[1], 16);
        const entries = Buffer.alloc(((parseInt(m[2], 16) - start) / 4096) * 8);
        if (fs.readSync(fd, entries, 0, entries.length, (start / 4096) * 8) === entries.length) out.push({ start, entries });
      }
      return out;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return [];
  }
}

function load() {
  if (!fs.existsSync(addon) || !fs.existsSync(info)) {
    throw new Error(
      `pyroscope: the native addon is not built (${addon} is missing): run \`node ${path.join(root, 'scripts', 'build.js')}\` ` +
        '(npm runs it at install; with npm\'s allowScripts on, allow this package\'s install script)',
    );
  }
  const built = JSON.parse(fs.readFileSync(info, 'utf8'));
  if (built.modules !== process.versions.modules) {
    throw new Error(
      `pyroscope: the native addon was built for Node ${built.node} (module ABI ${built.modules}) ` +
        `and this is Node ${process.version} (module ABI ${process.versions.modules}): ` +
        `rebuild it with \`node ${path.join(root, 'scripts', 'build.js')}\``,
    );
  }
  const before = executablePages();
  const loaded = require(addon);
  loaded.releaseLoadPages(before);
  return loaded;
}

module.exports = load();
