"""What makes two memory entries the same picture: the sha256 of the image file's bytes.

Image ids and file names name files, not pictures: COCO's ids (sparse, up to 581929) collide
with the 1..N ids that the ADE20K/Cityscapes converters give every split, and annotation files
get re-saved, subset, concatenated and renumbered. The memory records each image's content
identity when it is built; the query-key caches serve, and the leak guard excludes, by it.

Hashing the whole of COCO train (118k images, ~19 GB) at every start would cost minutes, so
:class:`ImageIdentities` keeps the digests in a cache file per image folder, keyed by file
name, size and modification time: an unchanged file costs one ``stat``, a changed or new one
is hashed again. The cache is written atomically; a damaged cache file is ignored (it only
costs re-hashing), never trusted.
"""
import hashlib
import json
import os
import os.path as osp
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .storage import sha256_file, write_json

CACHE_FORMAT = 'mmmaps-image-identities-v1'


# the identity is the sha256 of the file's bytes, read in chunks
image_sha256 = sha256_file


def identities_digest(identities: Sequence[str]) -> str:
    """One sha256 over a list of identities (a plan records this, not 118k digests)."""
    digest = hashlib.sha256()
    for identity in identities:
        digest.update(identity.encode() if isinstance(identity, str) else bytes(identity))
    return digest.hexdigest()


def default_cache_dir() -> str:
    cache = os.environ.get('MMMAPS_CACHE') or osp.join(osp.expanduser('~'), '.cache', 'mmmaps')
    return osp.join(cache, 'image_identities')


class ImageIdentities:
    """Content identities of image files, cached per folder by (name, size, mtime).

    Args:
        cache_dir (str, optional): Where the per-folder cache files live (default
            ``~/.cache/mmmaps/image_identities``, or ``$MMMAPS_CACHE/image_identities``);
            ``''`` disables the disk cache.
    """

    def __init__(self, cache_dir: Optional[str] = None):
        self.cache_dir = default_cache_dir() if cache_dir is None else cache_dir
        self._folders: Dict[str, Dict[str, list]] = {}
        self._dirty = set()
        self._lock = threading.Lock()
        self.hashed = 0  # files read and hashed by this object (statistics)

    def _cache_file(self, folder: str) -> str:
        name = hashlib.sha1(folder.encode()).hexdigest()[:20]
        return osp.join(self.cache_dir, f'{name}.json')

    def _entries(self, folder: str) -> Dict[str, list]:
        entries = self._folders.get(folder)
        if entries is None:
            entries = {}
            path = self._cache_file(folder) if self.cache_dir else None
            if path and osp.isfile(path):
                try:
                    with open(path) as f:
                        saved = json.load(f)
                    if saved.get('format') == CACHE_FORMAT and saved.get('folder') == folder:
                        entries = dict(saved['files'])
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    entries = {}  # a damaged cache is only a lost shortcut
            self._folders[folder] = entries
        return entries

    def _lookup(self, path: str):
        """(identity or None, stat) of an absolute path from the cache."""
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f'image {path} does not exist: cannot determine its '
                                    'content identity') from None
        folder, name = osp.split(path)
        with self._lock:
            entry = self._entries(folder).get(name)
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2], stat
        return None, stat

    def _remember(self, path: str, stat, digest: str) -> None:
        folder, name = osp.split(path)
        with self._lock:
            self._entries(folder)[name] = [stat.st_size, stat.st_mtime_ns, digest]
            self._dirty.add(folder)
            self.hashed += 1

    def of(self, path: str) -> str:
        """The identity of one image file (FileNotFoundError naming it when missing)."""
        path = osp.abspath(path)
        identity, stat = self._lookup(path)
        if identity is None:
            identity = image_sha256(path)
            self._remember(path, stat, identity)
        return identity

    def of_many(self, paths: Iterable[str], threads: int = 8) -> List[str]:
        """Identities of many files (the uncached ones hashed in ``threads`` threads:
        hashlib releases the GIL), then the cache files are saved."""
        paths = [osp.abspath(p) for p in paths]
        found = [self._lookup(p) for p in paths]
        missing = [i for i, (identity, _) in enumerate(found) if identity is None]
        identities = [identity for identity, _ in found]
        if missing:
            with ThreadPoolExecutor(max(1, threads)) as pool:
                digests = list(pool.map(image_sha256, [paths[i] for i in missing]))
            for i, digest in zip(missing, digests):
                self._remember(paths[i], found[i][1], digest)
                identities[i] = digest
        self.save()
        return identities

    def save(self) -> None:
        """Write the cache files of the folders with new digests (atomically)."""
        if not self.cache_dir:
            self._dirty.clear()
            return
        for folder in sorted(self._dirty):
            os.makedirs(self.cache_dir, exist_ok=True)
            write_json(self._cache_file(folder), dict(format=CACHE_FORMAT, folder=folder,
                                                      files=self._folders[folder]))
        self._dirty.clear()

    def stats(self) -> Tuple[int, int]:
        """(files known, files hashed by this object)."""
        return sum(len(e) for e in self._folders.values()), self.hashed
