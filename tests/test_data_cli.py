"""`epsresnet data check` and the offline-robust downloader (no real network is touched)."""

import hashlib
import io
import json
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf.data import download
from epsresnet_tf.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED / "cifar10-subset"
needs_shared = pytest.mark.skipif(
    not CIFAR.is_dir(), reason=f"the real CIFAR-10 subset is not at {CIFAR}"
)


@needs_shared
def test_data_check_json(capsys):
    rc = cli.main(
        ["data", "check", "cifar10", "--data-dir", str(CIFAR), "--json", "--batches", "3"]
    )
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
    assert cli.main(["data", "check", "cifar10", "--data-dir", str(CIFAR), "--no-throughput"]) == 0
    text = capsys.readouterr().out
    assert "5085" in text and "1017" in text and "mean pixel" in text


def test_data_check_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    rc = cli.main(["data", "check", "svhn", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "nowhere") in err and "make data-svhn" in err


def test_download_unreachable_fails_in_one_line_and_leaves_nothing(tmp_path, capsys):
    # Port 9 on localhost: refused at once, so no real network is involved.
    src = {
        "cifar10": [
            (
                "http://127.0.0.1:9/cifar-10-python.tar.gz",
                "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py",
                "",
            )
        ]
    }
    with pytest.raises(UserError) as err:
        download.fetch("cifar10", tmp_path, timeout=2, sources=src)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert "by hand" in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "cifar-10-python.tar.gz").exists()


def test_download_main_prints_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(
        download.SOURCES,
        "svhn",
        [
            (
                "http://127.0.0.1:9/train_32x32.mat",
                "train_32x32.mat",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
                None,
                "svhn",
            )
        ],
    )
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
    src = {
        "cifar10": [(archive.as_uri(), "cifar-10-python.tar.gz", md5, "cifar-10-batches-py", "")]
    }
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
    for _name, rows in download.SOURCES.items():
        for url, fname, md5, _, _ in rows:
            assert url.endswith("/" + fname) and len(md5) == 32
            int(md5, 16)
    assert {r[1] for r in download.SOURCES["svhn"]} == {
        "train_32x32.mat",
        "test_32x32.mat",
        "extra_32x32.mat",
    }


@needs_shared
def test_data_check_data_dir_defaults_to_epsresnet_data(capsys, monkeypatch):
    monkeypatch.setenv("EPSRESNET_DATA", str(CIFAR))
    assert cli.main(["data", "check", "cifar10", "--json", "--no-throughput"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["train"] == 5085 and out["data_dir"] == str(CIFAR)


def test_data_check_cifar100_coarse_labels(tmp_path, capsys):
    from test_data_readers import _write_cifar_batch

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(11)
    _, labels = _write_cifar_batch(folder / "train", 24, rng, ("fine_labels", "coarse_labels"), 100)
    _write_cifar_batch(folder / "test", 9, rng, ("fine_labels", "coarse_labels"), 100)
    rc = cli.main(
        [
            "data",
            "check",
            "cifar100",
            "--data-dir",
            str(tmp_path),
            "--json",
            "--label",
            "coarse",
            "--batch-size",
            "8",
            "--batches",
            "2",
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["classes"] == 20 and out["train"] == 24 and out["test"] == 9
    assert (
        out["splits"]["train"]["per_class"]
        == np.bincount(labels["coarse_labels"], minlength=20).tolist()
    )
    assert out["throughput_img_s"] > 0


def test_data_check_imagenet_too_many_undecodable_is_one_line_exit_2(tmp_path, capsys):
    from test_data_readers import write_imagenet_tree

    _, _, bad = write_imagenet_tree(tmp_path / "imagenet", np.random.default_rng(12))
    rc = cli.main(
        [
            "data",
            "check",
            "imagenet",
            "--data-dir",
            str(tmp_path),
            "--batch-size",
            "4",
            "--batches",
            "4",
        ]
    )
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "undecodable" in err and str(bad) in err
    assert "1 undecodable" in captured.out  # the per-split sample says so too


def test_download_offline_names_every_missing_file_and_leaves_no_folders(
    tmp_path, capsys, monkeypatch
):
    rows = [
        (f"http://127.0.0.1:9/{n}", n, md5, None, "svhn")
        for _, n, md5, _, _ in download.SOURCES["svhn"]
    ]
    monkeypatch.setitem(download.SOURCES, "svhn", rows)
    root = tmp_path / "fresh" / "data"
    rc = download.main(["svhn", "--data-dir", str(root), "--timeout", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    for _, name, md5, _, _ in rows:
        assert f"{root / 'svhn' / name} (MD5 {md5})" in err
    assert not (tmp_path / "fresh").exists()  # nothing half-made is left
    # One file already there: only the others are asked for, and it stays.
    (root / "svhn").mkdir(parents=True)
    (root / "svhn" / "train_32x32.mat").write_bytes(b"x")
    rows[0] = (rows[0][0], rows[0][1], hashlib.md5(b"x").hexdigest(), None, "svhn")
    assert download.main(["svhn", "--data-dir", str(root), "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert "train_32x32.mat at" not in err and "test_32x32.mat at" in err
    assert (root / "svhn" / "train_32x32.mat").read_bytes() == b"x"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_passes_data_as_data_dir():
    root = Path(__file__).resolve().parents[1]
    for target in ("data-cifar10", "data-cifar100", "data-svhn", "cifar10-eps"):
        dry = subprocess.run(
            ["make", "-n", target, "DATA=/some/where"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "--data-dir /some/where" in dry, (target, dry)
    dry = subprocess.run(
        ["make", "-n", "data-svhn"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "epsresnet_tf.data.download svhn --data-dir data" in dry
