"""`epsresnet data check` and the offline-robust downloader (no real network is touched)."""
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf.data import download
from epsresnet_tf.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED / "cifar10-subset"
needs_shared = pytest.mark.skipif(not CIFAR.is_dir(),
                                  reason=f"the real CIFAR-10 subset is not at {CIFAR}")


@needs_shared
def test_data_check_json(capsys):
    rc = cli.main(["data", "check", "cifar10", "--data-dir", str(CIFAR), "--json",
                   "--batches", "3"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["train"] == 5085 and out["test"] == 1017 and out["classes"] == 10
    assert out["throughput_img_s"] > 0
    labels = []
    for i in range(1, 6):
        with open(CIFAR / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            labels += pickle.load(f, encoding="latin1")["labels"]
    assert out["splits"]["train"]["per_class"] == np.bincount(labels, minlength=10).tolist()
    with open(CIFAR / "cifar-10-batches-py" / "test_batch", "rb") as f:
        pixels = np.asarray(pickle.load(f, encoding="latin1")["data"], np.float64)
    assert out["splits"]["test"]["mean_pixel"] == pytest.approx(pixels.mean(), rel=1e-9)


@needs_shared
def test_data_check_text(capsys):
    assert cli.main(["data", "check", "cifar10", "--data-dir", str(CIFAR),
                     "--no-throughput"]) == 0
    text = capsys.readouterr().out
    assert "5085" in text and "1017" in text and "mean pixel" in text


def test_data_check_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    rc = cli.main(["data", "check", "svhn", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "nowhere") in err and "make data-svhn" in err


def test_download_unreachable_fails_in_one_line_and_leaves_nothing(tmp_path, capsys):
    # Port 9 on localhost: refused at once, so no real network is involved.
    src = {"cifar10": [("http://127.0.0.1:9/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                        "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py", "")]}
    with pytest.raises(UserError) as err:
        download.fetch("cifar10", tmp_path, timeout=2, sources=src)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert "by hand" in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "cifar-10-python.tar.gz").exists()


def test_download_main_prints_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(download.SOURCES, "svhn",
                        [("http://127.0.0.1:9/train_32x32.mat", "train_32x32.mat",
                          "e26dedcc434d2e4c54c9b2d4a06d8373", None, "svhn")])
    rc = download.main(["svhn", "--data-dir", str(tmp_path), "--timeout", "2"])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def _tarball(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"hello batch"
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "src" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    path.write_bytes(buf.getvalue())
    return path, hashlib.md5(buf.getvalue()).hexdigest()


def test_download_verifies_renames_extracts_and_never_replaces(tmp_path):
    archive, md5 = _tarball(tmp_path)
    root = tmp_path / "data"
    src = {"cifar10": [(archive.as_uri(), "cifar-10-python.tar.gz", md5,
                        "cifar-10-batches-py", "")]}
    download.fetch("cifar10", root, sources=src)
    assert (root / "cifar-10-batches-py" / "test_batch").read_bytes() == b"hello batch"
    assert download.md5sum(root / "cifar-10-python.tar.gz") == md5
    # A second run leaves the extracted folder alone.
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"mine")
    download.fetch("cifar10", root, sources=src)
    assert (root / "cifar-10-batches-py" / "test_batch").read_bytes() == b"mine"
    # A wrong checksum on download: nothing is left behind.
    bad = {"cifar10": [(archive.as_uri(), "x.tar.gz", "0" * 32, "nothere", "")]}
    with pytest.raises(UserError, match="MD5"):
        download.fetch("cifar10", root, sources=bad)
    assert not (root / "x.tar.gz").exists() and not list(root.glob("*.part"))
    # An existing file with a wrong checksum is reported, not replaced.
    (root / "y.mat").write_bytes(b"partial")
    clash = {"svhn": [(archive.as_uri(), "y.mat", md5, None, "")]}
    with pytest.raises(UserError, match="not replaced"):
        download.fetch("svhn", root, sources=clash)
    assert (root / "y.mat").read_bytes() == b"partial"


def test_official_sources_and_checksums_are_well_formed():
    for name, rows in download.SOURCES.items():
        for url, fname, md5, _, _ in rows:
            assert url.endswith("/" + fname) and len(md5) == 32
            int(md5, 16)
    assert {r[1] for r in download.SOURCES["svhn"]} == {"train_32x32.mat", "test_32x32.mat",
                                                         "extra_32x32.mat"}
