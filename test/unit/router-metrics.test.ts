import { describe, expect, it } from 'vitest';
import { metricName, RouterMetrics } from '../../router/router-metrics.ts';

describe('RouterMetrics', () => {
  it('names fields the Prometheus way', () => {
    expect(metricName('keel_volume', 'mappedClusters')).toBe('keel_volume_mapped_clusters');
    expect(metricName('keel_asd', 'bytesRead')).toBe('keel_asd_bytes_read');
  });

  it('exposes volume, ASD and write-buffer counters, nested ones too, and forgets deleted volumes', async () => {
    const metrics = new RouterMetrics('r7');
    const text = await metrics.render({
      volumes: [{ name: 'vm1', stats: { mappedClusters: 42, label: 'ignored', backend: { scosUploaded: 3 } } }],
      backend: {
        asds: [{ asdId: 'asd-1', checksumErrors: 2, bytesRead: 4096 }],
        writeBuffer: { bytes: 1024, throttledWrites: 5 },
      },
    });
    expect(text).toContain('keel_volume_mapped_clusters{volume="vm1",router="r7"} 42');
    expect(text).toContain('keel_volume_backend_scos_uploaded{volume="vm1",router="r7"} 3');
    expect(text).toContain('keel_asd_checksum_errors{asd="asd-1",router="r7"} 2');
    expect(text).toContain('keel_write_buffer_throttled_writes{router="r7"} 5');
    expect(text).not.toContain('label');
    expect(text).toMatch(/^keel_process_/m); // process metrics (CPU, RSS, event loop lag) come along
    const after = await metrics.render({ volumes: [] });
    expect(after).not.toContain('volume="vm1"');
  });
});
