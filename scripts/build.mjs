// Bundles src/ into dist/ with esbuild: one ES module per entry point, shared chunks split out so that
// heavy parts (MCP, PostgreSQL, UI) load only when used. The CLI starts fast because it is one file
// plus the chunks its command needs.
import { chmodSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';

// dist/ is not wiped first: processes started from an earlier build (tests, agents) may still load
// their chunks lazily. Chunk names carry a content hash, so builds do not clash; chunks no build has
// written for 10 minutes are removed below.
const result = await build({
  metafile: true,
  entryPoints: { cli: 'src/cli/main.ts', index: 'src/index.ts' },
  outdir: 'dist',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'linked',
  minify: true,
  keepNames: false,
  chunkNames: 'chunks/[name]-[hash]',
  banner: { js: '' },
  logLevel: 'warning',
  packages: 'bundle',
  external: ['pg', 'pg-native', '@anthropic-ai/claude-code', 'playwright-core'],
});
chmodSync('dist/cli.js', 0o755);
const fresh = new Set(Object.keys(result.metafile.outputs).map((p) => p.replace(/\\/g, '/')));
const chunkDir = 'dist/chunks';
for (const name of readdirSync(chunkDir)) {
  const p = `${chunkDir}/${name}`;
  if (!fresh.has(p) && Date.now() - statSync(join(chunkDir, name)).mtimeMs > 10 * 60_000)
    rmSync(p, { force: true });
}
