// Segment a PNG with a segdeploy end-to-end export, from Node.js: no Python, no preprocessing.
//
//   node predict.mjs MODEL.e2e.onnx IMAGE.png MASK.png
//
// (A classifier's end-to-end graph prints the class index and its probability instead.)
//
// The end-to-end graph takes the image's uint8 pixels as they are (height x width x channels)
// and returns the uint8 class mask of the same height and width: normalisation, padding, the
// model, cropping and the argmax all run inside ONNX Runtime. The mask is written as an 8-bit
// greyscale PNG whose pixel values are the class indices.
import { readFileSync, writeFileSync } from "node:fs";

import ort from "onnxruntime-node";
import pngjs from "pngjs";

const { PNG } = pngjs;

/** The pixels of an 8-bit PNG as `channels` (3: RGB, 1: luminance) per pixel, alpha dropped. */
function readPixels(path, channels) {
  // pngjs decodes every colour type (grey, palette, with or without alpha) to 8-bit RGBA.
  const png = PNG.sync.read(readFileSync(path));
  const { width, height, data } = png;
  const pixels = new Uint8Array(width * height * channels);
  for (let i = 0; i < width * height; i++) {
    const [r, g, b] = [data[4 * i], data[4 * i + 1], data[4 * i + 2]];
    if (channels === 3) {
      pixels.set([r, g, b], 3 * i);
    } else {
      // Pillow's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded.
      pixels[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    }
  }
  return { width, height, pixels };
}

/** Write an (height x width) uint8 mask as a greyscale PNG: pixel value = class index. */
function writeMask(path, mask, width, height) {
  const png = new PNG({ width, height, colorType: 0, inputColorType: 0, bitDepth: 8 });
  png.data = Buffer.from(mask.buffer, mask.byteOffset, mask.byteLength);
  writeFileSync(path, PNG.sync.write(png, { colorType: 0, inputColorType: 0 }));
}

async function main([modelPath, imagePath, maskPath]) {
  if (!modelPath || !imagePath) {
    console.error("usage: node predict.mjs MODEL.e2e.onnx IMAGE.png [MASK.png]");
    process.exit(2);
  }
  const session = await ort.InferenceSession.create(modelPath);
  // The input is [height, width, channels]: the channel count is fixed by the model.
  const channels = Number(session.inputMetadata[0].shape[2]);
  const { width, height, pixels } = readPixels(imagePath, channels);
  const image = new ort.Tensor("uint8", pixels, [height, width, channels]);
  const started = performance.now();
  const outputs = await session.run({ image });
  const ms = performance.now() - started;
  if (outputs.label) {
    // A classifier's graph: the class index (into the model card's class_names) and the
    // probabilities of every class.
    const label = Number(outputs.label.data[0]);
    const p = outputs.probabilities.data[label];
    console.log(`${imagePath}: class ${label} (p=${p.toFixed(3)}, ${ms.toFixed(1)} ms)`);
    return;
  }
  if (!maskPath) throw new Error("a segmentation model needs MASK.png, where the mask goes");
  writeMask(maskPath, outputs.mask.data, width, height);
  console.log(`${imagePath}: ${width}x${height} -> ${maskPath} (${ms.toFixed(1)} ms)`);
}

main(process.argv.slice(2)).catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
