/**
 * Prometheus exposition of the router's live counters (prom-client). The numbers are the same ones GET
 * /status returns, flattened: every numeric field of a volume's stats becomes `keel_volume_<field>{volume}`,
 * of an ASD's counters `keel_asd_<field>{asd}`, and of the write buffer, read cache and backend store
 * `keel_write_buffer_<field>`, `keel_read_cache_<field>`, `keel_backend_<field>`, the inline I/O gate's
 * `keel_inline_io_<field>`, the RAM cache's `keel_ram_cache_<field>` and the reply buffer pool's
 * `keel_reply_buffers_<field>`. Walking the status
 * object, instead of listing metrics by hand, keeps /metrics and /status from drifting apart.
 */
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export interface MetricsStatus {
  volumes?: Array<{ name: string; stats: Record<string, unknown> }>;
  backend?: {
    asds?: Array<Record<string, unknown>>;
    store?: Record<string, unknown>;
    writeBuffer?: Record<string, unknown>;
    readCache?: Record<string, unknown>;
  };
  inlineIo?: Record<string, unknown>;
  ramCache?: Record<string, unknown>;
  replyBuffers?: Record<string, unknown>;
  wireGatherBuffers?: Record<string, unknown>;
  wireFrameBytes?: Record<string, unknown>;
  dtlSlabs?: Record<string, unknown>;
  uploadBuffers?: Record<string, unknown>;
  directWriteStaging?: Record<string, unknown>;
}

/** Prometheus metric names allow [a-zA-Z0-9_:]; camelCase fields become snake_case. */
export function metricName(prefix: string, field: string): string {
  const snake = field.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[^a-zA-Z0-9_]/g, '_').toLowerCase();
  return `${prefix}_${snake}`;
}

export class RouterMetrics {
  readonly registry = new Registry();
  private readonly gauges = new Map<string, Gauge>();

  constructor(routerId: string) {
    this.registry.setDefaultLabels({ router: routerId });
    collectDefaultMetrics({ register: this.registry, prefix: 'keel_process_' });
  }

  /** Sets every gauge from a fresh status snapshot and renders the exposition text. */
  async render(status: MetricsStatus): Promise<string> {
    for (const gauge of this.gauges.values()) gauge.reset(); // a deleted volume must not linger
    for (const volume of status.volumes ?? []) this.setAll('keel_volume', volume.stats, { volume: volume.name });
    for (const asd of status.backend?.asds ?? []) this.setAll('keel_asd', asd, { asd: String(asd.asdId) });
    this.setAll('keel_backend', status.backend?.store, {});
    this.setAll('keel_write_buffer', status.backend?.writeBuffer, {});
    this.setAll('keel_read_cache', status.backend?.readCache, {});
    this.setAll('keel_inline_io', status.inlineIo, {});
    this.setAll('keel_ram_cache', status.ramCache, {});
    this.setAll('keel_reply_buffers', status.replyBuffers, {});
    this.setAll('keel_wire_gather_buffers', status.wireGatherBuffers, {});
    this.setAll('keel_wire_frame_bytes', status.wireFrameBytes, {});
    this.setAll('keel_dtl_slabs', status.dtlSlabs, {});
    this.setAll('keel_upload_buffers', status.uploadBuffers, {});
    this.setAll('keel_direct_write_staging', status.directWriteStaging, {});
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private setAll(prefix: string, fields: Record<string, unknown> | undefined, labels: Record<string, string>): void {
    for (const [field, value] of Object.entries(fields ?? {})) {
      if (typeof value === 'number' && Number.isFinite(value)) this.gauge(metricName(prefix, field), Object.keys(labels)).set(labels, value);
      else if (value && typeof value === 'object' && !Array.isArray(value)) this.setAll(metricName(prefix, field), value as Record<string, unknown>, labels);
    }
  }

  private gauge(name: string, labelNames: string[]): Gauge {
    let gauge = this.gauges.get(name);
    if (!gauge) {
      gauge = new Gauge({ name, help: `Keel router counter ${name} (same value as GET /status)`, labelNames, registers: [this.registry] });
      this.gauges.set(name, gauge);
    }
    return gauge;
  }
}
