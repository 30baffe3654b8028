// Bundles the portal's scripts and styles with esbuild.
// Usage: node build.mjs [outdir]   (default: dist)
// The server's build script calls this with its own output directory and
// embeds the result in the binary; nothing is fetched at run time.

import { build } from 'esbuild';
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

const outdir = resolve(process.argv[2] || 'dist');
mkdirSync(outdir, { recursive: true });

await build({
  entryPoints: { app: 'src/app.js' },
  bundle: true,
  format: 'iife',
  target: ['es2020'],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  outdir,
  logLevel: 'warning',
});

await build({
  entryPoints: { app: 'src/app.css' },
  bundle: true,
  minify: true,
  outdir,
  logLevel: 'warning',
});

// The console page's script and styles (xterm.js and noVNC): loaded only
// where a console is shown. An ES module, because noVNC awaits at its top
// level.
await build({
  entryPoints: { console: 'src/console.js' },
  bundle: true,
  format: 'esm',
  target: ['es2022'],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  outdir,
  logLevel: 'warning',
});

await build({
  entryPoints: { console: 'src/console.css' },
  bundle: true,
  minify: true,
  outdir,
  logLevel: 'warning',
});
