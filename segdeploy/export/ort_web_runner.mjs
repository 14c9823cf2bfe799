// Run an ONNX file on onnxruntime-web's wasm backend under Node: raw arrays in, raw arrays out.
//
//   node ort_web_runner.mjs PACKAGE_DIR MODEL.onnx IN.json OUT.json
//
// PACKAGE_DIR holds node_modules/onnxruntime-web (segdeploy.export.target_check builds it).
// IN.json is a list of feeds, one per run, each mapping input names to {file, dtype, shape} (the
// file holds the array's bytes, C order); OUT.json is the list of the runs' outputs, written the
// same way beside IN.json. One wasm thread,
// the plain CPU kernels a browser runs. Errors are one line on stderr starting "error:".
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const TYPED = {
  float32: Float32Array,
  uint8: Uint8Array,
  int64: BigInt64Array,
  int32: Int32Array,
};

async function main([packageDir, modelPath, inPath, outPath]) {
  const require = createRequire(join(packageDir, "package.json"));
  const ort = require("onnxruntime-web");
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = "error";
  const session = await ort.InferenceSession.create(readFileSync(modelPath), {
    executionProviders: ["wasm"],
  });
  const runs = [];
  for (const [run, spec] of JSON.parse(readFileSync(inPath, "utf8")).entries()) {
    const outputs = await session.run(readFeed(ort, spec));
    const described = {};
    for (const [index, name] of session.outputNames.entries()) {
      const tensor = outputs[name];
      const file = join(dirname(outPath), `out${run}_${index}.bin`);
      const data = tensor.data;
      writeFileSync(file, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      const dtype = tensor.type === "bool" ? "uint8" : tensor.type;
      described[name] = { file, dtype, shape: tensor.dims };
    }
    runs.push(described);
  }
  writeFileSync(outPath, JSON.stringify(runs));
}

/** One run's tensors from their {file, dtype, shape} descriptions. */
function readFeed(ort, spec) {
  const feed = {};
  for (const [name, item] of Object.entries(spec)) {
    const bytes = readFileSync(item.file);
    const Typed = TYPED[item.dtype];
    if (!Typed) throw new Error(`input ${name}: dtype ${item.dtype} is not supported here`);
    const count = bytes.byteLength / Typed.BYTES_PER_ELEMENT;
    // Copied: a Buffer's offset need not be aligned for the typed array.
    const data = new Typed(count);
    new Uint8Array(data.buffer).set(bytes);
    feed[name] = new ort.Tensor(item.dtype, data, item.shape);
  }
  return feed;
}

main(process.argv.slice(2)).catch((err) => {
  console.error(`error: ${String(err.message || err).split("\n")[0]}`);
  process.exit(1);
});
