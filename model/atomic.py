"""Atomic file writes: a file either keeps its old bytes or has all of its new ones.

Used for checkpoints here and for every output of the pipeline, so that a killed process never
leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Temporary files are hidden, short and carry this mark: a rerun finds and removes what a killed run
# left (TEMPORARY), nothing that lists outputs takes one for an output, and an output's name may be
# as long as the file system allows.
TMP_MARK = ".partial"
TEMPORARY = re.compile(r"^\.[A-Za-z0-9_]{8}\.partial(\.[A-Za-z0-9]+)?$")
# What earlier versions named their temporary files (<name>.<random>.partial<suffix>), removed alike.
OLD_TEMPORARY = re.compile(r"^.+\.[A-Za-z0-9_]{8}\.partial(\.[A-Za-z0-9]+)?$")


def is_temporary(path: str | Path) -> bool:
    """Whether `path` names a temporary file of atomic_path, this version's or an earlier one's."""
    name = Path(path).name
    return bool(TEMPORARY.match(name) or OLD_TEMPORARY.match(name))


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    `keep_suffix`: the temporary name ends with `path`'s suffix too, for writers that choose the
    format by it (a video container).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = TMP_MARK + (path.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
