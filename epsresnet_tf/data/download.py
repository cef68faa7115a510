"""Fetch the datasets whose descriptions list download sources (CIFAR-10, CIFAR-100, SVHN)
from their official sites, verified by MD5.

``python -m epsresnet_tf.data.download DATASET --data-dir DIR`` (what ``make data-*`` runs).

* Files already on disk are verified, never replaced: a file with the wrong checksum is
  reported (delete it yourself to fetch it again).
* Downloads go to ``<name>.part`` beside the target and are renamed only once their MD5
  matches, so an interrupted download never leaves a file that looks complete.
* Without a network the command fails in one line naming every file still missing, with
  where to put it and its MD5; folders it created for the download are removed again.

ImageNet and MNIST are not fetched (ImageNet needs a login; MNIST's host is unreliable):
``data/README.md`` says where to put them.
"""

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from epsresnet_tf.data import datasets
from epsresnet_tf.data.readers import default_data_dir
from epsresnet_tf.errors import UserError

#: {name: [(url, file name, md5, what to extract into the data root or None, sub-folder for
#: the file)]}, from the dataset descriptions (datasets.Source).
SOURCES = datasets.downloadable()


def md5sum(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class Unreachable(UserError):
    """The download could not start or broke off (no network, host down)."""


def _fetch(url, dest, md5, timeout):
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        raise Unreachable(f"cannot download {url} ({getattr(err, 'reason', err)})") from err
    got = md5sum(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise UserError(
            f"{url} downloaded with MD5 {got}, expected {md5}; try again or "
            f"download it by hand to {dest}"
        )
    os.replace(part, dest)  # atomic: the target only ever appears complete


def _by_hand(sources, root):
    """'put <file> (MD5 …) at <path>' for each source whose result is not there yet."""
    todo = []
    for url, fname, md5, extracted, sub in sources:
        folder = root / sub if sub else root
        if not ((extracted and (root / extracted).is_dir()) or (folder / fname).exists()):
            todo.append(f"{url} at {folder / fname} (MD5 {md5})")
    return "; ".join(todo)


def _make_dirs(folder):
    """mkdir -p `folder`; returns the folders it created, deepest first."""
    created = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        created.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def fetch(name: str, data_dir, *, timeout: float = 30, sources: dict = None) -> list:
    """Ensure dataset `name` is under `data_dir`; returns the list of paths verified/fetched."""
    sources = (sources or SOURCES).get(name)
    if sources is None:
        raise UserError(
            f"cannot download {name!r}: only {', '.join(SOURCES)} are fetched; "
            "see data/README.md for the others"
        )
    root = Path(data_dir)
    done, created = [], []
    try:
        for url, fname, md5, extracted, sub in sources:
            folder = root / sub if sub else root
            target = folder / fname
            if extracted and (root / extracted).is_dir():
                print(f"{name}: {root / extracted} already there; not touched")
                done.append(root / extracted)
                continue
            created += _make_dirs(folder)
            if target.exists():
                got = md5sum(target)
                if got != md5:
                    raise UserError(
                        f"{target} exists with MD5 {got}, expected {md5}; it is "
                        "not replaced: delete it to download it again"
                    )
                print(f"{name}: {target} verified")
            else:
                print(f"{name}: downloading {url}")
                try:
                    _fetch(url, target, md5, timeout)
                except Unreachable as err:
                    raise UserError(
                        f"{err}; no network? download by hand and put "
                        f"{_by_hand(sources, root)}, then run this again"
                    ) from None
            if extracted:
                _extract(target, root, extracted)
                done.append(root / extracted)
            else:
                done.append(target)
    except BaseException:
        for folder in created:  # deepest first; only the ones still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return done


def _extract(archive, root, folder):
    tmp = root / (folder + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot extract {archive} ({err}); delete it and download it again"
        ) from err
    os.replace(tmp / folder, root / folder)
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m epsresnet_tf.data.download", description=__doc__.splitlines()[0]
    )
    ap.add_argument("dataset", choices=sorted(SOURCES))
    ap.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="data root (default: $EPSRESNET_DATA or ./data)",
    )
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args(argv)
    try:
        fetch(args.dataset, args.data_dir, timeout=args.timeout)
    except UserError as err:
        print(f"data-{args.dataset}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
