// A Web Worker that runs one WASI module once, off the page's thread, so
// that the page can stop a runaway app by terminating the worker.
//
// In:  {module: WebAssembly.Module (compiled by the page), args: [string], input: Uint8Array}
// Out: {started: true} once the module is compiled and about to start,
//      then {exitCode, stdout, stderr} or {error: "a sentence"}.
import { WASI } from "/static/wasi.js";

self.onmessage = async ({ data: { module, args, input } }) => {
  try {
    const wasi = new WASI({ args, stdin: input });
    const instance = await WebAssembly.instantiate(module, wasi.imports);
    self.postMessage({ started: true });
    const result = wasi.start(instance);
    self.postMessage(result, [result.stdout.buffer, result.stderr.buffer]);
  } catch (e) {
    self.postMessage({ error: e instanceof Error ? e.message : String(e) });
  }
};
