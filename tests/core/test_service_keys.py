"""The service's key ring file: created once, whole, however many processes start at the same moment."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from referral.core import service_keys


def test_processes_starting_together_agree_on_one_complete_key_ring(tmp_path: Path) -> None:
    """The workers of ``referral serve --workers N`` start at once on a fresh ``var/``: each either creates
    the ring or reads the one another created, never a file that is still being written (which crashed a
    worker with a JSONDecodeError)."""
    for attempt in range(20):
        path = tmp_path / f"attempt-{attempt}" / "service-keys.json"
        starting = threading.Barrier(8)

        def start(path: Path = path, starting: threading.Barrier = starting) -> str:
            starting.wait()
            return service_keys.load_or_create(path).active.kid

        with ThreadPoolExecutor(max_workers=8) as pool:
            kids = list(pool.map(lambda _: start(), range(8)))
        assert len(set(kids)) == 1
        assert [entry.name for entry in path.parent.iterdir()] == [path.name]  # no temporary file left
        assert path.stat().st_mode & 0o777 == service_keys.KEY_FILE_MODE
