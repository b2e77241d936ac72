import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { ErrorCode, FlowLoomError } from '../../src/core/errors.ts';
import { assertLocalFilesystem, detectNetworkFilesystem } from '../../src/platform/fsType.ts';

const ENV = 'FLOWLOOM_FS_TYPE';
const saved = process.env[ENV];
const tmp = mkdtempSync(join(tmpdir(), 'flowloom-fstype-'));

// The override is read from process.env on every call: keep the outer environment out of these tests.
beforeEach(() => {
  delete process.env[ENV];
});
afterEach(() => {
  if (saved === undefined) delete process.env[ENV];
  else process.env[ENV] = saved;
});
after(() => rmSync(tmp, { recursive: true, force: true }));

const fake = (type: number | bigint) => () => ({ type });

describe('detectNetworkFilesystem', () => {
  test('maps f_type magic numbers to names', () => {
    const cases: [number | bigint, string | null][] = [
      [0x6969, 'nfs'],
      [0x517b, 'smb'],
      [0xff534d42, 'cifs'],
      [0xfe534d42, 'smb2'],
      [0x65735546, 'fuse'],
      [0x00c36400, 'ceph'],
      [0x5346414f, 'afs'],
      [0x6b414653, 'afs'],
      [0x01021997, '9p'],
      [0x73757245, 'coda'],
      [0x01161970, 'gfs2'],
      [0x7461636f, 'ocfs2'],
      [0x0bd00bd0, 'lustre'],
      [0xef53, null], // ext4
      [0x01021994, null], // tmpfs
      [0x9123683e, null], // btrfs
      [0x794c7630, null], // overlayfs
      [0x58465342, null], // xfs
    ];
    for (const [type, name] of cases) {
      assert.equal(detectNetworkFilesystem('/x', fake(type)), name, `0x${type.toString(16)}`);
    }
  });

  test('accepts bigint and sign-extended 32-bit values', () => {
    assert.equal(detectNetworkFilesystem('/x', fake(0xff534d42n)), 'cifs');
    assert.equal(detectNetworkFilesystem('/x', fake(0xff534d42 | 0)), 'cifs'); // -11317950
    assert.equal(detectNetworkFilesystem('/x', fake(BigInt(0xfe534d42 | 0))), 'smb2');
  });

  test('walks up to the nearest existing ancestor', () => {
    const asked: string[] = [];
    const statfs = (p: string) => {
      asked.push(p);
      if (p !== '/srv') throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
      return { type: 0x6969 };
    };
    assert.equal(detectNetworkFilesystem('/srv/repo/.flowloom-coordination', statfs), 'nfs');
    assert.deepEqual(asked, ['/srv/repo/.flowloom-coordination', '/srv/repo', '/srv']);
  });

  test('gives up quietly when nothing answers', () => {
    const statfs = () => {
      throw new Error('EIO');
    };
    assert.equal(detectNetworkFilesystem('/a/b', statfs), null);
  });

  test('a local temp dir and a missing path under it are local', () => {
    assert.equal(detectNetworkFilesystem(tmp), null);
    assert.equal(detectNetworkFilesystem(join(tmp, 'missing', 'deeper')), null);
  });

  test('FLOWLOOM_FS_TYPE overrides detection', () => {
    process.env[ENV] = 'nfs';
    assert.equal(detectNetworkFilesystem(tmp), 'nfs');
    process.env[ENV] = 'GlusterFS';
    assert.equal(detectNetworkFilesystem(tmp), 'glusterfs');
    process.env[ENV] = 'local';
    assert.equal(detectNetworkFilesystem('/x', fake(0x6969)), null);
    process.env[ENV] = '';
    assert.equal(detectNetworkFilesystem('/x', fake(0x6969)), 'nfs');
  });

  test('an unknown FLOWLOOM_FS_TYPE is refused with the accepted names', () => {
    process.env[ENV] = 'ntfs';
    assert.throws(
      () => detectNetworkFilesystem(tmp),
      (e: unknown) =>
        e instanceof FlowLoomError &&
        e.code === ErrorCode.INVALID_INPUT &&
        e.message ===
          'FLOWLOOM_FS_TYPE must be "local" or a network filesystem name (nfs, smb, cifs, smb2, fuse, ceph, afs, 9p, coda, gfs2, ocfs2, lustre, glusterfs), got "ntfs"',
    );
  });
});

describe('assertLocalFilesystem', () => {
  test('passes on a local directory', () => {
    assert.doesNotThrow(() => assertLocalFilesystem(tmp));
  });

  test('refuses a network filesystem with an exact message and hint', () => {
    process.env[ENV] = 'nfs';
    assert.throws(
      () => assertLocalFilesystem('/x'),
      (e: unknown) => {
        assert.ok(e instanceof FlowLoomError);
        assert.equal(e.code, ErrorCode.STORE_UNAVAILABLE);
        assert.equal(
          e.message,
          'the state directory /x is on a network filesystem (nfs): the file backend needs local rename and file-watch semantics',
        );
        assert.equal(
          e.hint,
          'use the PostgreSQL backend for agents on several machines: --store postgres://... or FLOWLOOM_STORE',
        );
        assert.deepEqual(e.details, { path: '/x', filesystem: 'nfs' });
        return true;
      },
    );
  });
});
