/**
 * Reed-Solomon encode throughput of the backend codec on 64 MiB objects, striped exactly as putObject
 * stripes them (docs/backend-format.md). One stripe in flight at a time = one core of the libuv threadpool.
 * Run: node --import tsx bench/ec-encode.ts [stripeUnitBytes]
 */
import { randomBytes } from 'node:crypto';
import { ErasureCodec } from '../backend/erasure-codec.ts';

const objectBytes = 64 * 1024 * 1024;
const unitBytes = Number(process.argv[2] ?? 65536);
const rounds = 5;

async function encodeObject(codec: ErasureCodec, data: Buffer, parity: Buffer, inFlight: number): Promise<void> {
  const stripeBytes = codec.k * unitBytes;
  const stripes = Math.ceil(data.length / stripeBytes);
  let next = 0;
  const worker = async () => {
    while (next < stripes) {
      const s = next++;
      await codec.encodeStripe(data, s * stripeBytes, parity, s * codec.m * unitBytes, unitBytes);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

async function measure(k: number, m: number, inFlight: number): Promise<number> {
  const codec = new ErasureCodec(k, m);
  const stripeBytes = k * unitBytes;
  const data = randomBytes(Math.ceil(objectBytes / stripeBytes) * stripeBytes);
  const parity = Buffer.alloc((data.length / k) * m);
  await encodeObject(codec, data, parity, inFlight); // warm-up
  const started = process.hrtime.bigint();
  for (let r = 0; r < rounds; r++) await encodeObject(codec, data, parity, inFlight);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return (rounds * objectBytes) / (1024 * 1024) / seconds;
}

console.log(`Reed-Solomon encode, 64 MiB objects, stripe unit ${unitBytes} B, ${rounds} rounds (MiB/s of object data)`);
for (const [k, m] of [
  [4, 2],
  [8, 3],
] as const) {
  const oneCore = await measure(k, m, 1);
  const twoThreads = await measure(k, m, 2);
  console.log(`${k}+${m}: ${oneCore.toFixed(0)} MiB/s per core (1 stripe in flight), ${twoThreads.toFixed(0)} MiB/s with 2 in flight`);
}
