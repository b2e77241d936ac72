// Bundles src/ into dist/ with esbuild: one ES module per entry point, shared chunks split out so that
// heavy parts (MCP, PostgreSQL, UI) load only when used. The CLI starts fast because it is one file
// plus the chunks its command needs.
import { chmodSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

rmSync('dist', { recursive: true, force: true });
await build({
  entryPoints: { cli: 'src/cli/main.ts', index: 'src/index.ts' },
  outdir: 'dist',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'linked',
  minifySyntax: true,
  chunkNames: 'chunks/[name]-[hash]',
  banner: { js: '' },
  logLevel: 'warning',
  packages: 'bundle',
  external: ['pg', 'pg-native', '@anthropic-ai/claude-code', 'playwright-core'],
});
chmodSync('dist/cli.js', 0o755);
