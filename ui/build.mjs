// Bundles the portal's scripts and styles with esbuild.
// Usage: node build.mjs [outdir]   (default: dist)
// The server's build script calls this with its own output directory and
// embeds the result in the binary; nothing is fetched at run time.

import { build } from 'esbuild';
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

const outdir = resolve(process.argv[2] || 'dist');
mkdirSync(outdir, { recursive: true });

// One script bundle: `iife` for the portal's own script, an ES module where
// a dependency awaits at its top level.
const script = (name, format, target) => build({
  entryPoints: { [name]: `src/${name}.js` },
  bundle: true,
  format,
  target: [target],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  outdir,
  logLevel: 'warning',
});

const styles = (name) => build({
  entryPoints: { [name]: `src/${name}.css` },
  bundle: true,
  minify: true,
  outdir,
  logLevel: 'warning',
});

await script('app', 'iife', 'es2020');
await styles('app');

// The console page's script and styles (xterm.js and noVNC): loaded only
// where a console is shown. An ES module, because noVNC awaits at its top
// level.
await script('console', 'esm', 'es2022');
await styles('console');

// The usage charts (uPlot): loaded only on pages that draw them.
await script('charts', 'iife', 'es2020');
await styles('charts');
