// The ESM entry's types: named imports and the default object.
import pyroscope, { init, start, stop, wrapWithLabels, fastifyMiddleware, SourceMapper } from 'pyroscope-profiler';

init({ appName: 'typed-esm' });
start();
const doubled: Promise<number> = wrapWithLabels({ route: 'esm' }, async (x: number) => x * 2, 21);
const plugin = fastifyMiddleware();
const mapper: Promise<SourceMapper> = pyroscope.SourceMapper.create(['dist']);
await Promise.all([doubled, mapper]);
await stop();
export { plugin };
