"""The lock that lets one build (or merge) write a memory folder at a time."""
import datetime
import json
import logging
import os
import os.path as osp
import socket
from typing import Optional

from mmengine.logging import print_log

from .build_plan import MemoryBuildError


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildLock:
    """``<out>.lock`` holding ``{pid, host, started}`` of the build that owns ``out``.

    A second build of the same ``out`` refuses, naming the owner; a lock whose process
    is dead (same host) is stale and taken over. A lock of another host is never taken
    over (its process cannot be checked): delete the file if that build is gone.
    """

    def __init__(self, path: str):
        self.path = path
        self.held = False

    def owner(self) -> Optional[dict]:
        """``{pid, host, started}`` of the holder, None without a lock, ``{}`` if unreadable."""
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # garbage: treated as stale below

    def acquire(self) -> 'BuildLock':
        """Take the lock (or a stale one); refuses, naming the owner, if a live build holds it."""
        me = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=datetime.datetime.now().isoformat(timespec='seconds'))
        os.makedirs(osp.dirname(self.path) or '.', exist_ok=True)
        # the lock appears with its content (hard link of a finished unique temporary file)
        tmp = f'{self.path}.{me["host"]}-{me["pid"]}.tmp'
        with open(tmp, 'w') as f:
            json.dump(me, f)
        try:
            return self._acquire(tmp, me)
        finally:
            os.remove(tmp)

    def _acquire(self, tmp: str, me: dict) -> 'BuildLock':
        for _ in range(3):
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                owner = self.owner()
                if owner is None:
                    continue
                pid, host = owner.get('pid'), owner.get('host')
                if pid == me['pid'] and host == me['host']:
                    self.held = True  # ours already (build_memory.main run twice in a process)
                    return self
                if isinstance(pid, int) and host and (host != me['host'] or process_alive(pid)):
                    raise MemoryBuildError(
                        f'another build of {self.path[:-len(".lock")]} is running: pid {pid} on '
                        f'{host} (started {owner.get("started")}, lock {self.path}); wait for '
                        'it to finish' + ('' if host == me['host'] else
                                          f', or delete {self.path} if it is gone'))
                print_log(f'taking over the stale lock {self.path} of pid {pid} on {host} '
                          '(no longer running)', logger='current', level=logging.WARNING)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            self.held = True
            return self
        raise MemoryBuildError(f'cannot take the lock {self.path} (contended); try again')

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            owner = self.owner() or {}
            if owner.get('pid') == os.getpid():
                os.remove(self.path)
            self.held = False

    def __enter__(self) -> 'BuildLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
