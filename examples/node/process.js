// Stores an image with CacheService.PutImage, then has ProcessorService.Process make a
// 300x200 WebP of it and writes that to a file. The .proto files are loaded at run
// time (no generated code):
//
//   npm ci
//   node process.js cat.png thumb.webp [--cache 127.0.0.1:50051] [--processor 127.0.0.1:50052]
//
// Prints the stored image's id, then the variant's size and type, one line each.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.join(__dirname, "..", "..", "protos");
const CHUNK = 256 * 1024; // the services' own chunk size; any size up to 4 MB works

const definition = protoLoader.loadSync(
  ["imageservice/v1/cache_service.proto", "imageservice/v1/processor_service.proto"],
  // keepCase: fields as the .proto spells them (image_id); enums as their names.
  { includeDirs: [PROTOS], keepCase: true, enums: String, longs: String, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).imageservice.v1;

function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

// Client-streaming: the header first, then the bytes in chunks; the answer is the
// stored image's metadata, once it is durable.
function putImage(cache, filename, data) {
  return new Promise((resolve, reject) => {
    const call = cache.PutImage({ deadline: deadline(30) }, (error, response) =>
      error ? reject(error) : resolve(response.image),
    );
    // Public, so GET /images/{id} over HTTP serves it to anyone. Left unset, an image
    // is private to its owner ("me"), and the gateway answers every other caller 404.
    call.write({
      header: { original_filename: filename, owner: "me", visibility: "VISIBILITY_PUBLIC" },
    });
    for (let i = 0; i < data.length; i += CHUNK) {
      call.write({ chunk: data.subarray(i, i + CHUNK) });
    }
    call.end();
  });
}

// Server-streaming: the first message carries the variant's metadata (and, for most
// results, all the bytes); any further messages carry more chunks.
function processImage(processor, request, metadata) {
  return new Promise((resolve, reject) => {
    const stream = processor.Process(request, metadata, { deadline: deadline(30) });
    let variant = null;
    const chunks = [];
    stream.on("data", (message) => {
      if (message.variant) variant = message.variant;
      chunks.push(message.chunk);
    });
    stream.on("error", reject);
    stream.on("end", () => resolve({ variant, data: Buffer.concat(chunks) }));
  });
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      cache: { type: "string", default: "127.0.0.1:50051" },
      processor: { type: "string", default: "127.0.0.1:50052" },
    },
  });
  if (positionals.length !== 2) {
    console.error("usage: node process.js IMAGE OUTPUT [--cache HOST:PORT] [--processor HOST:PORT]");
    return 2;
  }
  const [input, output] = positionals;
  // Plaintext, as `make run` serves; with IMAGESVC_TLS_* set on the services, use
  // grpc.credentials.createSsl(ca, key, cert) instead.
  const credentials = grpc.credentials.createInsecure();
  const cache = new v1.CacheService(values.cache, credentials);
  const processor = new v1.ProcessorService(values.processor, credentials);
  try {
    const image = await putImage(cache, path.basename(input), fs.readFileSync(input));
    console.log(`stored ${image.id} (${image.format}, ${image.width}x${image.height})`);
    const metadata = new grpc.Metadata();
    metadata.set("x-request-id", "my-trace-id"); // in every service's log lines
    const request = {
      image_id: image.id,
      transformation: {
        operations: [{ resize: { width: 300, height: 200, fit: "FIT_COVER" } }],
        output: { format: "OUTPUT_FORMAT_WEBP" },
      },
    };
    const { variant, data } = await processImage(processor, request, metadata);
    fs.writeFileSync(output, data);
    console.log(`wrote ${output}: ${variant.width}x${variant.height} ${variant.media_type}, ${data.length} bytes`);
    return 0;
  } catch (error) {
    // error.code is a grpc.status; the ErrorInfo reason travels in the
    // grpc-status-details-bin trailer (a google.rpc.Status), see docs/grpc.md.
    console.error(`error: ${grpc.status[error.code] ?? error.code}: ${error.details ?? error.message}`);
    return 1;
  } finally {
    cache.close();
    processor.close();
  }
}

main().then((code) => {
  process.exitCode = code;
});
