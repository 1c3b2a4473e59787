// ESM entry: the same API as the CommonJS one (named exports and a default object).
import pyroscope from './index.js';

export const {
  init,
  start,
  stop,
  wrapWithLabels,
  getLabels,
  setLabels,
  getWallLabels,
  setWallLabels,
  startWallProfiling,
  stopWallProfiling,
  startCpuProfiling,
  stopCpuProfiling,
  startHeapProfiling,
  stopHeapProfiling,
  setLogger,
  expressMiddleware,
  fastifyMiddleware,
  SourceMapper,
} = pyroscope;
export default pyroscope.default;
