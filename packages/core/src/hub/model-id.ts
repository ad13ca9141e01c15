/** A Hugging Face model id, split: `org/name@revision` → { repoId: 'org/name', revision }. */
export interface HubModelId {
  /** `org/name`, or a bare `name` for the hub's legacy top-level models (e.g. `gpt2`). */
  repoId: string;
  /** Branch, tag or 40-hex commit hash; `main` when the id names none. */
  revision: string;
}

export const DEFAULT_REVISION = 'main';

// The hub's own rule (huggingface_hub's validate_repo_id): word characters, '-' and '.',
// not starting or ending with '-' or '.', at most 96 characters per part.
const REPO_PART = /^(?![-.])[\w.-]{1,96}(?<![-.])$/;
const COMMIT_HASH = /^[0-9a-f]{40}$/;

/** Whether a revision is a full commit hash (then it names a snapshot directly, without refs/). */
export function isCommitHash(revision: string): boolean {
  return COMMIT_HASH.test(revision);
}

/** Why `repoId` is not a valid hub model id, or null when it is. */
export function invalidRepoIdReason(repoId: string): string | null {
  const parts = repoId.split('/');
  if (parts.includes('')) return 'the org and the name must not be empty';
  if (parts.length > 2) return 'a model id has at most one "/" (org/name)';
  for (const part of parts) {
    if (!REPO_PART.test(part)) {
      return `'${part}' may hold only letters, digits, '_', '-' and '.', not start or end with '-' or '.', and be at most 96 characters`;
    }
    if (part.includes('--') || part.includes('..')) return `'${part}' must not contain '--' or '..'`;
  }
  if (repoId.endsWith('.git')) return "a model id must not end with '.git'";
  return null;
}

/** Why `revision` cannot be a git revision (it also becomes a path under refs/), or null. */
export function invalidRevisionReason(revision: string): string | null {
  if (revision === '') return 'the revision after "@" must not be empty';
  // eslint-disable-next-line no-control-regex
  if (/[\s\\\x00-\x1f~^:?*[]/.test(revision)) return 'a revision must not contain whitespace or any of \\ ~ ^ : ? * [';
  if (revision.startsWith('/') || revision.endsWith('/') || revision.includes('//')) return 'a revision must not start or end with "/" or hold "//"';
  if (revision.split('/').some((p) => p === '.' || p === '..' || p.startsWith('.'))) return "a revision's parts must not start with '.'";
  return null;
}

/**
 * Parses `org/name` or `org/name@revision`. Returns null (never throws) when the text is not a
 * valid id, so callers can fall back to explaining it as a path; {@link describeInvalidModelId}
 * says why.
 */
export function parseModelId(text: string): HubModelId | null {
  const at = text.indexOf('@');
  const repoId = at < 0 ? text : text.slice(0, at);
  const revision = at < 0 ? DEFAULT_REVISION : text.slice(at + 1);
  if (invalidRepoIdReason(repoId) !== null || invalidRevisionReason(revision) !== null) return null;
  return { repoId, revision };
}

/** Why `text` is not a valid `org/name[@revision]` id, or null when it is one. */
export function describeInvalidModelId(text: string): string | null {
  const at = text.indexOf('@');
  const repoId = at < 0 ? text : text.slice(0, at);
  return invalidRepoIdReason(repoId) ?? (at < 0 ? null : invalidRevisionReason(text.slice(at + 1)));
}

/** The cache folder of a model repo: `org/name` → `models--org--name` (huggingface_hub's layout). */
export function repoFolderName(repoId: string): string {
  return `models--${repoId.split('/').join('--')}`;
}
