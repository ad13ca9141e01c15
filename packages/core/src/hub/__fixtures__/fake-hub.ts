import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/**
 * A loopback imitation of the Hugging Face hub's resolve endpoints, as far as
 * @huggingface/hub's fileDownloadInfo/downloadFile use them:
 * `GET /{org}/{name}/resolve/{revision}/{path}` with `Range: bytes=0-0` probes, `X-Repo-Commit`,
 * `ETag` (git blob sha1 for regular files), LFS files (`*.safetensors`) redirected to a CDN route
 * with `X-Linked-Etag` (their sha256) and `X-Linked-Size`, and `X-Error-Code` on 404/401.
 */
export interface FakeHubRequest {
  method: string;
  url: string;
  authorization: string | null;
  range: string | null;
}

interface RepoState {
  /** Branch or tag → commit. */
  refs: Map<string, string>;
  /** Commit → path → content. */
  commits: Map<string, Map<string, Buffer>>;
  token: string | null;
}

export interface FakeHub {
  endpoint: string;
  requests: FakeHubRequest[];
  /** Adds a commit of `repoId` holding `files`, and points `ref` (default main) at it. */
  addCommit(repoId: string, commit: string, files: Map<string, Buffer>, options?: { ref?: string; token?: string }): void;
  /** The next full download of a path (any repo) sends half its bytes, then drops the connection. */
  truncateNext(path: string): void;
  /** The next full download of a path sends its bytes with the first one flipped. */
  corruptNext(path: string): void;
  close(): Promise<void>;
}

/** Every file of a fixture directory, as repo contents. */
export function readFixtureFiles(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const name of readdirSync(dir)) files.set(name, readFileSync(join(dir, name)));
  return files;
}

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function gitBlobSha1(data: Buffer): string {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

const isLfs = (path: string): boolean => path.endsWith('.safetensors');

function sendError(res: ServerResponse, status: number, code: string, message: string, commit?: string): void {
  res.writeHead(status, { 'Content-Type': 'application/json', 'X-Error-Code': code, ...(commit ? { 'X-Repo-Commit': commit } : {}) });
  res.end(JSON.stringify({ error: message }));
}

/** Serves `data`, honouring a single `bytes=a-b` range as the hub and its CDN do. */
function sendContent(req: IncomingMessage, res: ServerResponse, data: Buffer, headers: Record<string, string>, fault: 'truncate' | 'corrupt' | null): void {
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  if (range) {
    const start = Number(range[1]);
    const end = range[2] === '' ? data.length - 1 : Math.min(Number(range[2]), data.length - 1);
    res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${data.length}`, 'Content-Length': String(end - start + 1) });
    res.end(req.method === 'HEAD' ? undefined : data.subarray(start, end + 1));
    return;
  }
  res.writeHead(200, { ...headers, 'Content-Length': String(data.length), 'Accept-Ranges': 'bytes' });
  if (req.method === 'HEAD') {
    res.end();
  } else if (fault === 'truncate') {
    res.write(data.subarray(0, Math.floor(data.length / 2)), () => res.destroy());
  } else if (fault === 'corrupt') {
    const bad = Buffer.from(data);
    bad[0] ^= 0xff;
    res.end(bad);
  } else {
    res.end(data);
  }
}

export async function startFakeHub(): Promise<FakeHub> {
  const repos = new Map<string, RepoState>();
  const blobsBySha = new Map<string, Buffer>();
  const faults = new Map<string, 'truncate' | 'corrupt'>();
  /** The fault planned for a full (unranged) download of `path`, used up by this call. */
  const takeFault = (req: IncomingMessage, path: string): 'truncate' | 'corrupt' | null => {
    const fault = req.headers.range ? undefined : faults.get(path);
    if (!fault) return null;
    faults.delete(path);
    return fault;
  };
  const requests: FakeHubRequest[] = [];

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    requests.push({ method: req.method ?? 'GET', url: url.pathname, authorization: req.headers.authorization ?? null, range: req.headers.range ?? null });
    const cdn = /^\/cdn\/([0-9a-f]{64})\/(.+)$/.exec(url.pathname);
    if (cdn) {
      const data = blobsBySha.get(cdn[1]);
      if (!data) return sendError(res, 404, 'EntryNotFound', 'no such object');
      const path = decodeURIComponent(cdn[2]);
      return sendContent(req, res, data, { ETag: `"${cdn[1]}"`, 'Content-Type': 'application/octet-stream' }, takeFault(req, path));
    }
    const at = url.pathname.indexOf('/resolve/');
    if (at < 0) return sendError(res, 404, 'NotFound', 'not a resolve URL');
    const repoId = url.pathname.slice(1, at);
    const [rawRevision, ...pathParts] = url.pathname.slice(at + '/resolve/'.length).split('/');
    const revision = decodeURIComponent(rawRevision);
    const path = pathParts.map(decodeURIComponent).join('/');
    const repo = repos.get(repoId);
    // The hub answers 401 RepoNotFound both for unknown repos and for private ones without access.
    if (!repo || (repo.token !== null && req.headers.authorization !== `Bearer ${repo.token}`)) {
      return sendError(res, 401, 'RepoNotFound', 'Repository not found');
    }
    const commit = repo.commits.has(revision) ? revision : repo.refs.get(revision);
    const files = commit === undefined ? undefined : repo.commits.get(commit);
    if (commit === undefined || !files) return sendError(res, 404, 'RevisionNotFound', 'Invalid rev id');
    const data = files.get(path);
    if (!data) return sendError(res, 404, 'EntryNotFound', 'Entry not found', commit);
    if (isLfs(path)) {
      const sha = sha256Hex(data);
      blobsBySha.set(sha, data);
      res.writeHead(302, {
        Location: `/cdn/${sha}/${encodeURIComponent(path)}`,
        'X-Repo-Commit': commit,
        'X-Linked-Etag': `"${sha}"`,
        'X-Linked-Size': String(data.length),
      });
      return res.end();
    }
    const headers = { ETag: `"${gitBlobSha1(data)}"`, 'X-Repo-Commit': commit, 'Content-Type': 'text/plain; charset=utf-8' };
    return sendContent(req, res, data, headers, takeFault(req, path));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    addCommit(repoId, commit, files, options = {}) {
      let repo = repos.get(repoId);
      if (!repo) {
        repo = { refs: new Map(), commits: new Map(), token: null };
        repos.set(repoId, repo);
      }
      repo.commits.set(commit, files);
      repo.refs.set(options.ref ?? 'main', commit);
      if (options.token !== undefined) repo.token = options.token;
    },
    truncateNext(path) {
      faults.set(path, 'truncate');
    },
    corruptNext(path) {
      faults.set(path, 'corrupt');
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((error) => (error ? reject(error) : resolve()));
      }),
  };
}
