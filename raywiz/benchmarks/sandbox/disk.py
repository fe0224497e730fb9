"""The disk cap where no private tmpfs could be mounted (no mount namespace): the evaluator measures the
sample's directory and kills the sample when its files pass the cap. (RLIMIT_FSIZE bounds one file;
posix_fallocate of many files evades it.) A watcher acts after the fact, within one poll interval; the
tmpfs of confine.private_file_system refuses the write itself, so it is used wherever it can be."""

from __future__ import annotations

import os
import threading

POLL_S = 0.05
MAX_ENTRIES = 200_000  # more files than this is over the cap too (each costs an inode)


def allocated_bytes(root: str, stop_at: int) -> int:
    """Bytes allocated by files under `root` (st_blocks; symlinks not followed), counting up to `stop_at`."""
    total, entries, todo = 0, 0, [root]
    while todo and total <= stop_at:
        try:
            with os.scandir(todo.pop()) as it:
                for entry in it:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        return stop_at + 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
        except OSError:
            continue
    return total


class DiskWatcher:
    """Polls `root` until stopped; over `cap_bytes`, calls `kill` once and sets `exceeded`."""

    def __init__(self, root: str, cap_bytes: int, kill):
        self.root, self.cap, self.kill = root, cap_bytes, kill
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raywiz-disk-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            if self.measure_now():
                return

    def measure_now(self) -> bool:
        """Over the cap now? (then the sample is killed, as by the poll)"""
        if allocated_bytes(self.root, self.cap) > self.cap:
            self.exceeded = True
            self.kill()
        return self.exceeded

    def stop(self) -> None:
        self._stop.set()
