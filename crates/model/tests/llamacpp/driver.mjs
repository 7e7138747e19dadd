// llama.cpp (node-llama-cpp, CPU) for the GGUF tests, several prompts per process:
//
//   node driver.mjs probs    MODEL.gguf '[[ID, ...], ...]'   -> per prompt, a JSON line {id: probability}
//   node driver.mjs tokenize MODEL.gguf '["text", ...]'      -> per text, a JSON line [ID, ...] (no BOS)
//
// As ../shared/peers/llamacpp/llamacpp.mjs, with one difference: the KV cache holds f32 (node-llama-cpp
// defaults to f16, which alone moves the fixtures' next-token probabilities by up to 4e-4) and
// flash attention is off, so an F32 file is computed in f32 throughout. The test copies this file
// beside llamacpp.mjs, where node finds the node-llama-cpp package.
import {getLlama} from "node-llama-cpp";

const [what, modelPath, arg] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
let output = "";
if (what === "tokenize") {
  for (const text of JSON.parse(arg)) {
    output += JSON.stringify(Array.from(model.tokenize(text, false))) + "\n";
  }
} else if (what === "probs") {
  for (const ids of JSON.parse(arg)) {
    const context = await model.createContext({
      contextSize: 1024, threads: 2, batchSize: 512, flashAttention: false,
      experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
    });
    const seq = context.getSequence();
    const sampling = {temperature: 1, topK: 0, topP: 1, minP: 0};
    for await (const out of seq.evaluateWithMetadata(ids, {probabilities: true}, sampling)) {
      output += JSON.stringify(Object.fromEntries(out.probabilities)) + "\n";
      break;
    }
    await context.dispose();
  }
} else {
  console.error("usage: node driver.mjs probs|tokenize MODEL.gguf JSON");
  process.exit(2);
}
process.stdout.write(output, () => process.exit(0));
