/**
 * One HTTP(S) GET of a presigned URL, body collected into one Buffer. Used by the S3 ASD for its GETs
 * (asd-s3.ts says why they bypass the SDK's middleware stack).
 *
 * Bounded: a body longer than `bytesMax` (by Content-Length, or as it arrives) fails the request and
 * destroys its socket. The signal aborts the request and its socket at any point, before or during the body.
 * A response that ends early (the connection dropped mid-body) is an error, never a short body.
 */
import http from 'node:http';
import https from 'node:https';
import { KeelError } from '../shared/errors.ts';

export interface HttpGetOptions {
  headers?: Record<string, string>;
  signal?: AbortSignal;
  bytesMax: number;
  agents: { http: http.Agent; https: https.Agent };
}

export interface HttpGetResult {
  status: number;
  body: Buffer;
}

export function httpGet(url: string, options: HttpGetOptions): Promise<HttpGetResult> {
  const secure = url.startsWith('https:');
  const request = secure ? https.request : http.request;
  const agent = secure ? options.agents.https : options.agents.http;
  return new Promise<HttpGetResult>((resolve, reject) => {
    const req = request(url, { method: 'GET', agent, headers: options.headers, signal: options.signal }, (res) => {
      const status = res.statusCode ?? 0;
      const declared = Number(res.headers['content-length'] ?? Number.NaN);
      if (declared > options.bytesMax) {
        req.destroy(KeelError.io(`GET answered ${declared} bytes, more than the ${options.bytesMax} expected`, undefined, { status }));
        return;
      }
      collectBody(res, Number.isFinite(declared) ? declared : undefined, options.bytesMax).then(
        (body) => resolve({ status, body }),
        (err: unknown) => {
          req.destroy();
          reject(err);
        },
      );
    });
    req.on('error', reject);
    req.end();
  });
}

/** The body in one Buffer: preallocated when the length is declared (no concat of 64 KiB chunks). */
function collectBody(res: http.IncomingMessage, declared: number | undefined, bytesMax: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const fixed = declared === undefined ? undefined : Buffer.allocUnsafe(declared);
    const chunks: Buffer[] = [];
    let received = 0;
    res.on('data', (chunk: Buffer) => {
      if (received + chunk.length > (fixed ? fixed.length : bytesMax)) {
        res.destroy();
        reject(KeelError.io(`GET body ran past ${fixed ? `its Content-Length of ${fixed.length}` : `${bytesMax}`} bytes`));
        return;
      }
      if (fixed) chunk.copy(fixed, received);
      else chunks.push(chunk);
      received += chunk.length;
    });
    const cutShort = (cause?: Error) =>
      KeelError.io(`GET body cut short after ${received} bytes${fixed ? ` of ${fixed.length}` : ''}${cause ? `: ${cause.message}` : ''}`, cause);
    res.on('error', (err) => reject(cutShort(err)));
    res.on('close', () => {
      if (!res.complete || (fixed && received !== fixed.length)) reject(cutShort());
      else resolve(fixed ?? Buffer.concat(chunks, received));
    });
  });
}
