"""Walking a data folder through symbolic links, with loop detection.

Data often sits behind links: on another disk, on shared storage, in a data set manager's cache
(`study.data download` itself links kagglehub's cache). Every scan of a data folder (Kermany's
<split>/<CLASS>/ folders, CoronaHack's CSV and image folders) follows linked folders and files; the
paths it yields are the paths through the links, as the user sees them.

A link that leads back to a folder on its own path (a loop) would make the walk endless (or end
where the operating system gives up, after 40 links, with the images counted many times); it is
refused in one line naming the link, where it points and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pneumo_ray.config.errors import UserError


def _identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the folder `path` leads to, None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def loop_error(link: str | os.PathLike, ancestor: str | os.PathLike) -> UserError:
    """The one line for a link that leads back to `ancestor`, a folder on its own path."""
    real = os.path.realpath(link)
    where = "" if os.path.normpath(ancestor) == real else f" (real path {real})"
    return UserError(
        f"{link}: symbolic link loop: it leads back to {ancestor}{where}, a folder that holds it, so the scan "
        f"would never end; remove that link or point it at a folder outside {ancestor}"
    )


def walk(root: str | os.PathLike) -> Iterator[tuple[Path, list[str], list[str]]]:
    """`os.walk(root, followlinks=True)`, top-down, yielding (folder, subfolder names, file names).

    As with os.walk, the caller may remove names from the subfolder list to skip them. Before it goes
    into a subfolder, the walk checks that the subfolder is not one of the folders on its own path
    (compared by device and inode, so that every way round a loop is caught): a link loop raises
    UserError. The same folder reached by two links that are not a loop is walked twice; the callers
    count each image once (by split and file name)."""
    root = str(root)
    ancestors: dict[str, dict[tuple[int, int], str]] = {root: {}}
    for here, dirnames, filenames in os.walk(root, followlinks=True):
        above = ancestors.pop(here, {})
        own = _identity(here)
        chain = {**above, own: here} if own else above
        yield Path(here), dirnames, filenames
        for d in dirnames:
            sub = os.path.join(here, d)
            ident = _identity(sub)
            if ident in chain:
                raise loop_error(sub, chain[ident])
            ancestors[sub] = chain


def resolved_folder(root: str | os.PathLike) -> Path:
    """`root` with links resolved (a loop in the links of `root` itself: UserError)."""
    try:
        return Path(root).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # Python 3.11: RuntimeError("Symlink loop from ...")
        raise UserError(
            f"{root}: symbolic link loop in the path itself ({e}); point the link at the data folder"
        ) from None
