// Copies the client out of the Python package, where the hub serves it from
// (src/hubbub/static/), into this package directory: one source, two ways to
// ship it. Run by `npm pack`/`npm publish` (prepack) and `npm run typecheck`;
// the copies are build products, ignored by git.
//
// It also refuses a package whose version is not hubbub's own (src/hubbub/_version.py):
// the npm client and the Python hub it speaks to are released together.
import { copyFileSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const pkg = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
const python = readFileSync(join(root, "src", "hubbub", "_version.py"), "utf8");
const match = python.match(/^__version__\s*=\s*"([^"]+)"/m);
if (!match) {
  console.error("sync.mjs: no __version__ in src/hubbub/_version.py");
  process.exit(1);
}
if (match[1] !== pkg.version) {
  console.error(
    `sync.mjs: package.json says ${pkg.version}, src/hubbub/_version.py says ${match[1]}: make them equal`,
  );
  process.exit(1);
}
for (const name of ["hubbub.js", "hubbub.d.ts"]) {
  copyFileSync(join(root, "src", "hubbub", "static", name), join(here, name));
}
copyFileSync(join(root, "LICENSE"), join(here, "LICENSE"));
