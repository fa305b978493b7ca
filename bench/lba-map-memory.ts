/**
 * RAM cost of the LBA map (router/lba-map.ts) per mapped cluster, for the patterns that matter
 * (docs/volume-driver.md, "LBA map"), and the speed of get/set.
 * Run: node --import tsx bench/lba-map-memory.ts
 */
import { LbaMap, packLocation } from '../router/lba-map.ts';
import { makeRandom } from '../test/helpers/seeded-random.ts';

const clustersPerSco = 16384; // 64 MiB SCOs
const writes = 1 << 20;


/** Writes `writes` clusters at the LBAs chosen by pickLba, assigning locations like the driver does. */
function fill(pickLba: (index: number) => number): { map: LbaMap; setNsPerOp: number } {
  const map = new LbaMap();
  const started = process.hrtime.bigint();
  for (let index = 0; index < writes; index++) {
    const sequence = index;
    map.set(pickLba(index), packLocation(1 + Math.floor(sequence / clustersPerSco), sequence % clustersPerSco));
  }
  const elapsedNs = Number(process.hrtime.bigint() - started);
  return { map, setNsPerOp: elapsedNs / writes };
}

function measureGet(map: LbaMap, pickLba: (index: number) => number): number {
  let sink = 0;
  const started = process.hrtime.bigint();
  for (let index = 0; index < writes; index++) sink += map.get(pickLba(index)) & 1;
  const elapsedNs = Number(process.hrtime.bigint() - started);
  if (sink < 0) console.log(sink);
  return elapsedNs / writes;
}

function report(label: string, volumeClusters: number, pickLba: (random: () => number, index: number) => number): void {
  const setRandom = makeRandom(42);
  const { map, setNsPerOp } = fill((index) => pickLba(setRandom, index));
  const getRandom = makeRandom(7);
  const getNsPerOp = measureGet(map, (index) => pickLba(getRandom, index));
  const bytes = map.memoryBytes();
  const layout = map.layoutStats();
  console.log(
    [
      label.padEnd(34),
      `volume ${(volumeClusters * 4096) / 2 ** 30} GiB`.padEnd(18),
      `mapped ${map.mappedCount}`.padEnd(16),
      `${(bytes / map.mappedCount).toFixed(2)} B/cluster`.padEnd(18),
      `total ${(bytes / 2 ** 20).toFixed(2)} MiB`.padEnd(18),
      `set ${setNsPerOp.toFixed(0)} ns/op`.padEnd(16),
      `get ${getNsPerOp.toFixed(0)} ns/op`.padEnd(16),
      `pages ${layout.pages} (dense ${layout.densePages})`,
    ].join(' '),
  );
}

const fourGiBClusters = (4 * 2 ** 30) / 4096;
const oneTiBClusters = 2 ** 40 / 4096;
console.log(`LBA map: ${writes} cluster writes per pattern, locations assigned sequentially (64 MiB SCOs)`);
report('1M sequential', oneTiBClusters, (_random, index) => index);
report('1M random in a 4 GiB volume', fourGiBClusters, (random) => Math.floor(random() * fourGiBClusters));
report('1M random across 1 TiB', oneTiBClusters, (random) => Math.floor(random() * oneTiBClusters));
