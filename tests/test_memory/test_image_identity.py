"""Content identities of image files (sha256 of the bytes), cached per folder."""
import hashlib
import os
import os.path as osp

import pytest

from mmmaps.memory.image_identity import ImageIdentities, identities_digest


def _write(path, data: bytes):
    with open(path, 'wb') as f:
        f.write(data)


def test_identity_is_the_sha256_of_the_bytes(tmp_path):
    files = {f'{i}.jpg': os.urandom(1000 + i) for i in range(5)}
    for name, data in files.items():
        _write(tmp_path / name, data)
    ids = ImageIdentities(cache_dir=str(tmp_path / 'cache'))
    got = ids.of_many([str(tmp_path / n) for n in files])
    assert got == [hashlib.sha256(d).hexdigest() for d in files.values()]
    # a copy under another name is the same picture
    _write(tmp_path / 'copy.jpg', files['2.jpg'])
    assert ids.of(str(tmp_path / 'copy.jpg')) == got[2]


def test_cache_is_used_and_a_changed_file_is_rehashed(tmp_path):
    path = tmp_path / 'a.png'
    _write(path, b'first version')
    cache = str(tmp_path / 'cache')
    first = ImageIdentities(cache_dir=cache)
    assert first.of_many([str(path)]) == [hashlib.sha256(b'first version').hexdigest()]
    assert first.hashed == 1
    again = ImageIdentities(cache_dir=cache)
    assert again.of_many([str(path)]) == [hashlib.sha256(b'first version').hexdigest()]
    assert again.hashed == 0  # served from the cache file: nothing read
    stat = os.stat(path)
    _write(path, b'second version!')  # other size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = ImageIdentities(cache_dir=cache)
    assert third.of(str(path)) == hashlib.sha256(b'second version!').hexdigest()
    assert third.hashed == 1


def test_a_damaged_cache_costs_a_rehash_never_a_wrong_identity(tmp_path):
    path = tmp_path / 'a.png'
    _write(path, b'pixels')
    cache = str(tmp_path / 'cache')
    ImageIdentities(cache_dir=cache).of_many([str(path)])
    (cache_file,) = [osp.join(cache, n) for n in os.listdir(cache)]
    with open(cache_file, 'w') as f:  # truncated
        f.write('{"format": "mmmaps-image-identities-v1", "folder"')
    fresh = ImageIdentities(cache_dir=cache)
    assert fresh.of(str(path)) == hashlib.sha256(b'pixels').hexdigest()
    assert fresh.hashed == 1


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.jpg'):
        ImageIdentities(cache_dir='').of(str(tmp_path / 'nope.jpg'))


def test_identities_digest_depends_on_order_and_content():
    a, b = hashlib.sha256(b'a').hexdigest(), hashlib.sha256(b'b').hexdigest()
    assert identities_digest([a, b]) == hashlib.sha256((a + b).encode()).hexdigest()
    assert identities_digest([a, b]) != identities_digest([b, a])
