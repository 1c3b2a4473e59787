'use strict';
// @pyroscope/nodejs's SourceMapper, kept so code that builds one runs unchanged. Frames are
// named by the addon from V8's code events as the JavaScript runs, and no source map is
// applied to them: `create()` only checks its arguments and reads nothing, and the mapper
// maps nothing (every location comes back as given). Profiles of transpiled code show the
// generated files.

class SourceMapper {
  /**
   * As @pyroscope/nodejs: `SourceMapper.create(searchDirs, debug?)` resolves to a mapper.
   * @param {string[]} searchDirs
   * @param {boolean} [debug]
   */
  static async create(searchDirs, debug = false) {
    if (!Array.isArray(searchDirs) || !searchDirs.every((d) => typeof d === 'string')) {
      throw new TypeError('SourceMapper.create(searchDirs): searchDirs must be an array of directory paths');
    }
    return new SourceMapper(debug);
  }

  constructor(debug = false) {
    this.infoMap = new Map();
    this.debug = debug;
  }

  /** Always false: no source map is loaded. */
  hasMappingInfo(_inputPath) {
    return false;
  }

  /** The location as given. */
  mappingInfo(location) {
    return location;
  }
}

module.exports = { SourceMapper };
