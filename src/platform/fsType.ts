/**
 * Network-filesystem detection for the file backend.
 *
 * The file backend relies on atomic rename(2), O_EXCL and inotify-style watches between processes on one
 * machine. NFS, SMB, FUSE mounts (sshfs, glusterfs) and cluster filesystems weaken or break those, so the
 * backend refuses them up front instead of losing a claim race later. One statfs(2) call, no processes.
 */
import { statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ErrorCode, FlowLoomError, invalidInput } from '../core/errors.ts';

/** Reads the f_type magic number of the filesystem holding a path (injectable for tests). */
export type StatfsFn = (path: string) => { type: number | bigint };

/** f_type magic numbers (linux/magic.h and filesystem sources) of network and cluster filesystems. */
const NETWORK_MAGIC: ReadonlyMap<number, string> = new Map([
  [0x6969, 'nfs'],
  [0x517b, 'smb'],
  [0xff534d42, 'cifs'],
  [0xfe534d42, 'smb2'],
  // Every FUSE filesystem shares one magic; sshfs and glusterfs are the common ones, so assume network.
  [0x65735546, 'fuse'],
  [0x00c36400, 'ceph'],
  [0x5346414f, 'afs'],
  [0x6b414653, 'afs'],
  [0x01021997, '9p'],
  [0x73757245, 'coda'],
  [0x01161970, 'gfs2'],
  [0x7461636f, 'ocfs2'],
  [0x0bd00bd0, 'lustre'],
]);

/** Names accepted by FLOWLOOM_FS_TYPE to simulate a network mount. */
const NETWORK_NAMES: ReadonlySet<string> = new Set([...NETWORK_MAGIC.values(), 'glusterfs']);

const ENV_OVERRIDE = 'FLOWLOOM_FS_TYPE';

const defaultStatfs: StatfsFn = (p) => statfsSync(p);

function fromEnv(): string | null | undefined {
  const raw = process.env[ENV_OVERRIDE]?.trim().toLowerCase();
  if (raw === undefined || raw === '') return undefined;
  if (raw === 'local') return null;
  if (NETWORK_NAMES.has(raw)) return raw;
  throw invalidInput(
    `${ENV_OVERRIDE} must be "local" or a network filesystem name (${[...NETWORK_NAMES].join(', ')}), got "${raw}"`,
  );
}

function magicOf(type: number | bigint): number {
  // Some platforms report f_type as a signed 32-bit value (CIFS would be negative): compare as unsigned.
  return Number(BigInt.asUintN(32, BigInt(type)));
}

/** Name of the network or cluster filesystem holding `path` (e.g. `nfs`, `fuse`), or null if local. */
export function detectNetworkFilesystem(path: string, statfs: StatfsFn = defaultStatfs): string | null {
  const override = fromEnv();
  if (override !== undefined) return override;
  // The state directory may not exist yet: its nearest existing ancestor is where it will be created.
  let p = resolve(path);
  for (;;) {
    try {
      return NETWORK_MAGIC.get(magicOf(statfs(p).type)) ?? null;
    } catch {
      const parent = dirname(p);
      // Not even / answered: nothing to refuse on; the backend's own I/O will report the real problem.
      if (parent === p) return null;
      p = parent;
    }
  }
}

/** Throws STORE_UNAVAILABLE when `path` is on a network filesystem, where the file backend is unsafe. */
export function assertLocalFilesystem(path: string): void {
  const dir = resolve(path);
  const fsName = detectNetworkFilesystem(dir);
  if (fsName === null) return;
  throw new FlowLoomError(
    ErrorCode.STORE_UNAVAILABLE,
    `the state directory ${dir} is on a network filesystem (${fsName}): the file backend needs local rename and file-watch semantics`,
    {
      hint: 'use the PostgreSQL backend for agents on several machines: --store postgres://... or FLOWLOOM_STORE',
      details: { path: dir, filesystem: fsName },
    },
  );
}
