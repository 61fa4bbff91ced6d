"""The toolkit conventions: the demo's data fallback, figure formats, CSV, progress lines, package data."""

import functools
import hashlib
import http.server
import json
import logging
import shutil
import subprocess
import sys
import threading
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from isotpp.cli import app as cli
from isotpp.data import discovery, download, load_dataset
from isotpp.data.bundled import SUBSET_DIR, SUBSET_SIZES, demo_data_dir
from isotpp.data.download import Resource
from isotpp.errors import UserError
from isotpp.progress import LogProgress, progress
from isotpp.reporting.figures import figure_format, parse_formats, save_figure
from isotpp.spectra.histogram import spectrum_histogram
from isotpp.studies import mlp_linear
from isotpp.studies.linear_report import draw_results_figure, write_report
from isotpp.studies.pai_report import draw_accuracy_figure, pai_rows
from isotpp.studies.pai_report import write_report as pai_write_report

REPO = Path(__file__).resolve().parents[1]
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def _is(fmt: str, path: Path) -> bool:
    data = Path(path).read_bytes()
    return data.startswith(MAGIC[fmt]) and (fmt != "svg" or b"<svg" in data[:2000])


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    """Hide every copy of Fashion-MNIST from discovery, as on a fresh machine without Debian's package.

    How the data are hidden: $ISOTPP_DATA is unset, the cache ($ISOTPP_CACHE) is an empty
    temporary directory, and the system locations (/usr/share/datasets, ...) are replaced by
    an empty temporary tree, so find_dataset_dir looks only in empty places.
    """
    monkeypatch.delenv("ISOTPP_DATA", raising=False)
    monkeypatch.setenv("ISOTPP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty-system").mkdir()
    monkeypatch.setattr(discovery, "SYSTEM_DATA_DIRS", (tmp_path / "empty-system",))
    with pytest.raises(UserError, match="fashion_mnist not found"):
        discovery.find_dataset_dir("fashion_mnist")
    return tmp_path / "cache"


def _offline(monkeypatch):
    def unreachable(url, timeout=0):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(download, "open_url", unreachable)


# ---------------------------------------------------------------- the shipped subset


def test_the_shipped_subset_is_fashion_mnist_with_its_licence():
    train = load_dataset("fashion_mnist", "train", data_dir=SUBSET_DIR, resize=None, normalize=False)
    test = load_dataset("fashion_mnist", "test", data_dir=SUBSET_DIR, resize=None, normalize=False)
    assert (len(train), len(test)) == (SUBSET_SIZES["train"], SUBSET_SIZES["test"]) == (10_000, 2_000)
    assert train.images.shape[1:] == (28, 28, 1)
    # every class is there, near-balanced (Fashion-MNIST has 10 classes of equal size)
    assert np.bincount(train.labels, minlength=10).min() >= 900 and np.bincount(test.labels).min() >= 180
    notice = (SUBSET_DIR / "LICENSE").read_text()
    assert "Copyright © 2017 Zalando SE" in notice and "MIT License" in notice


def test_the_subset_is_the_first_images_of_the_real_set(fashion_mnist_dir):
    for split, n in SUBSET_SIZES.items():
        full = load_dataset("fashion_mnist", split, data_dir=fashion_mnist_dir, resize=None, normalize=False,
                            limit=n)  # fmt: skip
        sub = load_dataset("fashion_mnist", split, data_dir=SUBSET_DIR, resize=None, normalize=False)
        np.testing.assert_array_equal(sub.images, full.images)
        np.testing.assert_array_equal(sub.labels, full.labels)


def test_the_package_data_ship_in_a_wheel(tmp_path):
    # a non-editable install gets what the wheel holds: build one from a copy of the sources
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "isotpp", src / "isotpp", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("isotpp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (*FILES, "LICENSE"):
        assert f"isotpp/data/fashion_mnist_subset/{f}" in names
    assert "isotpp/py.typed" in names
    assert {f"isotpp/studies/table_configs/{n}.py" for n in ("table1_resnet56", "table2_resnet34", "table2_resnet50",
                                                     "vgg19_cifar100")} <= names  # isotpp.studies.paper_tables.load_spec's
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


# ---------------------------------------------------------------- the demo's data: found, downloaded, shipped


def test_offline_without_data_the_demo_uses_the_subset_and_says_so(no_fashion_mnist, monkeypatch, caplog):
    _offline(monkeypatch)
    with caplog.at_level(logging.INFO, logger="isotpp"):
        assert demo_data_dir() == (SUBSET_DIR, "subset")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("Fashion-MNIST not found and could not be downloaded: running on the 10,000 "
                                  "training / 2,000 test images shipped with isotpp; for the full set: "
                                  "`apt-get install dataset-fashion-mnist`")  # fmt: skip
    assert not list(no_fashion_mnist.glob("fashion_mnist/*"))  # nothing half-downloaded stays


def test_an_explicit_data_dir_is_never_replaced_by_the_subset(tmp_path):
    with pytest.raises(UserError, match="does not hold fashion_mnist"):
        demo_data_dir(tmp_path)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a copy of the subset's files as a 'mirror'."""
    root = tmp_path / "mirror"
    root.mkdir()
    for f in FILES:
        shutil.copy(SUBSET_DIR / f, root / f)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def test_online_without_data_the_demo_downloads_into_the_cache(no_fashion_mnist, http_mirror, monkeypatch):
    url, root = http_mirror
    md5 = {f: hashlib.md5((root / f).read_bytes()).hexdigest() for f in FILES}
    # the first mirror 404s, the second serves the files; every MD5 is checked
    monkeypatch.setitem(download.RESOURCES, "fashion_mnist",
                        tuple(Resource(f, md5[f], (f"{url}missing/{f}", f"{url}{f}")) for f in FILES))
    assert demo_data_dir() == (no_fashion_mnist / "fashion_mnist", "downloaded")
    for f in FILES:
        assert hashlib.md5((no_fashion_mnist / "fashion_mnist" / f).read_bytes()).hexdigest() == md5[f]
    # the next call finds the cached copy without the network
    _offline(monkeypatch)
    assert demo_data_dir() == (no_fashion_mnist / "fashion_mnist", "found")
    test = load_dataset("fashion_mnist", "test", resize=None, normalize=False)
    assert len(test) == SUBSET_SIZES["test"]


def test_a_corrupt_mirror_is_not_trusted(no_fashion_mnist, http_mirror, monkeypatch, caplog):
    url, _ = http_mirror
    monkeypatch.setitem(download.RESOURCES, "fashion_mnist",
                        tuple(Resource(f, "0" * 32, (f"{url}{f}",)) for f in FILES))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="isotpp"):
        assert demo_data_dir() == (SUBSET_DIR, "subset")
    with caplog.at_level(logging.DEBUG, logger="isotpp"):
        demo_data_dir()
    assert any("checksum mismatch" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert not list((no_fashion_mnist / "fashion_mnist").iterdir())


def test_the_demo_command_runs_offline_on_the_subset(no_fashion_mnist, monkeypatch, tmp_path, capsys):
    """The README's main command on a fresh offline machine, up to the study.

    The study's training is replaced by a stand-in that loads the data through the study's own
    loader and reports fixed results (training is tested in test_study_mlp.py; the real offline
    demo, end to end, is measured in the report of issue 14); everything around it is real.
    """
    _offline(monkeypatch)
    seen = {}

    def study(config, out, log=None):
        seen["config"], seen["data"] = config, mlp_linear.load_data(config)
        results = _tiny_results() | {"config": config.to_dict(), "wall_s": 1.0}
        Path(out).mkdir(parents=True)
        (Path(out) / "results.json").write_text(json.dumps(results))
        return results | {"files": {k: str(v) for k, v in write_report(results, out).items()}
                                   | {"results": str(Path(out) / "results.json")}}

    monkeypatch.setattr(mlp_linear, "run_study", study)
    out = tmp_path / "runs" / "demo"
    assert cli.main(["demo", "--out", str(out), "--format", "png,svg"]) == 0
    captured = capsys.readouterr()
    fallback = [ln for ln in captured.err.splitlines() if "shipped with isotpp" in ln]
    assert len(fallback) == 1 and fallback[0].startswith("isotpp: Fashion-MNIST not found")
    config, data = seen["config"], seen["data"]
    assert config.data_dir == str(SUBSET_DIR) and config.quick and config.seeds == (0,)
    assert (data.n_train, int(data.test_x.shape[0])) == (10_000, 2_000)
    assert _is("png", out / "figure.png") and _is("svg", out / "figure.svg")
    assert f"figure_svg: {out / 'figure.svg'}" in captured.out and f"csv: {out / 'results.csv'}" in captured.out
    title = [t for t in (out / "figure.svg").read_text().split("<!-- ")[1:] if t.startswith("MLP-7-Linear")]
    assert len(title) == 1 and "the 10,000-image subset shipped with isotpp" in " ".join(title[0].split())
    assert "| L1 " in captured.out  # the table


def test_a_bad_format_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing
        cli.main(["demo", "--out", str(tmp_path / "d"), "--format", "png,jpeg"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("isotpp demo: error: argument --format: unknown figure format 'jpeg': "
                          "choose among png, pdf, svg") and "\n" not in err
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- figures


def _tiny_results():
    cell = {"best_acc": [80.0, 81.0], "final_acc": [79.0, 80.0], "jsv_after_prune": [0.01, 0.02],
            "acc_per_epoch": [[70.0, 80.0], [71.0, 81.0]], "jsv_per_epoch": [[0.5, 0.9], [0.6, 1.0]]}
    return {"config": {"dataset": "fashion_mnist", "seeds": [0, 1], "ratio": 0.8, "quick": True},
            "runs": {"L1": {"0.01": cell, "0.001": cell}, "TPP": {"0.01": cell, "0.001": cell}},
            "base": {"acc": [84.0, 84.0], "jsv": [1.5, 1.5]}}


def test_the_format_follows_the_extension_and_png_is_print_quality(tmp_path):
    from PIL import Image

    fig = Figure(figsize=(6.4, 4.8))
    fig.add_subplot().plot([0, 1], [1, 0])
    for name, fmt in (("f.PDF", "pdf"), ("f.svg", "svg"), ("f.png", "png")):
        assert _is(fmt, save_figure(fig, tmp_path / name))
    path = tmp_path / "f.png"
    with Image.open(path) as im:
        assert im.info["dpi"][0] == pytest.approx(200, abs=0.1) and im.size == (1280, 960)
    for bad in ("f.jpg", "f"):
        with pytest.raises(UserError, match=r"end the file name in \.png, \.pdf, \.svg"):
            save_figure(Figure(), tmp_path / bad)
    assert figure_format("a/b.SVG") == "svg" and parse_formats(" png, PDF ,png") == ("png", "pdf")
    assert parse_formats(None) == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.PDF", "f.png", "f.svg"]


def test_every_plotting_function_draws_into_given_axes_and_returns_the_figure():
    fig = Figure()
    ax = fig.subplots(1, 1)
    rng = np.random.default_rng(0)
    assert spectrum_histogram(rng.uniform(0.5, 1.5, 200), ax=ax) is fig and ax.get_xlabel() == "singular value s"

    fig2 = Figure()
    axes = fig2.subplots(2, 2)
    assert draw_results_figure(_tiny_results(), ax=axes) is fig2
    assert [a.get_title() for a in axes.ravel()] == ["LR 1e-2: mean JSV", "LR 1e-3: mean JSV",
                                                      "LR 1e-2: test accuracy", "LR 1e-3: test accuracy"]
    assert fig2.get_suptitle().replace("\n", " ") == "MLP-7-Linear on Fashion-MNIST, pruning ratio\u00a00.8, 2\u00a0seeds, quick schedule"
    # each method: its own colour, marker and line style in every panel
    lines = [ln for ln in axes[1][0].get_lines() if ln.get_label() in ("L1", "TPP")]
    styles = {ln.get_label(): (ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in lines}
    assert len({s[0] for s in styles.values()}) == len({s[1] for s in styles.values()}) == 2
    assert len({s[2] for s in styles.values()}) == 2

    fig3 = Figure()
    (pai_ax,) = fig3.subplots(1, 1, squeeze=False)[0]
    assert draw_accuracy_figure(_pai_results(), ax=[pai_ax]) is fig3
    with pytest.raises(UserError, match="one axes per part"):
        draw_accuracy_figure(_pai_results(), ax=fig3.subplots(1, 2))


def test_the_accuracy_panels_share_one_y_axis():
    results = _tiny_results()
    results["runs"]["L1"]["0.001"] = dict(results["runs"]["L1"]["0.001"], acc_per_epoch=[[20.0, 80.0]] * 2)
    axes = draw_results_figure(results).axes
    assert axes[2].get_ylim() == axes[3].get_ylim() and axes[2].get_ylim()[0] < 25


def test_study_reports_write_every_format_and_a_csv(tmp_path):
    paths = write_report(_tiny_results(), tmp_path / "mlp", formats=("pdf", "svg"))
    assert [k for k in paths if k.startswith("figure")] == ["figure", "figure_svg"]
    assert _is("pdf", paths["figure"]) and _is("svg", paths["figure_svg"])

    paths = pai_write_report(_pai_results(), tmp_path / "pai", formats=("pdf", "svg"))
    assert paths["accuracy_figure"].name == "accuracy.pdf" and _is("pdf", paths["accuracy_figure"])
    assert _is("svg", paths["accuracy_figure_svg"]) and _is("svg", paths["jsv_figure_svg"])
    assert _is("pdf", paths["jsv_figure"])
    assert paths["csv"].read_text().splitlines() == [
        "part,arch,method,target_density,seed,final_acc,val_selected_acc,jsv_mean,jsv_zero_fraction,density,"
        "diverged",
        "lenet,lenet_300_100,dense,1.0,0,88.0,87.5,1.4,0.0,1.0,False",
        "lenet,lenet_300_100,snip,0.05,3,86.0,85.0,0.6,0.0,0.05,False",
    ]
    assert pai_rows(_pai_results())[1]["seed"] == 3


def _pai_results():
    def cell(acc, jsv, d, seed):
        return {"final_acc": [acc], "val_selected_acc": [acc - 0.5 if acc > 87 else acc - 1], "jsv_mean": [jsv],
                "jsv_zero_fraction": [0.0], "density": [d], "diverged": [False], "seeds": [seed]}

    return {"lenet": {"arch": "lenet_300_100", "densities": [0.05], "methods": ["dense", "snip"],
                      "runs": {"dense": {"1": cell(88.0, 1.4, 1.0, 0)}, "snip": {"0.05": cell(86.0, 0.6, 0.05, 3)}}}}


def test_the_spectrum_command_writes_each_format(tmp_path, capsys):
    base = ["spectrum", "--depth", "3", "--width", "16", "--input-dim", "16", "--num-classes", "4",
            "--init", "gaussian"]  # fmt: skip
    assert cli.main([*base, "--plot", str(tmp_path / "h.svg")]) == 0
    assert _is("svg", tmp_path / "h.svg")
    assert cli.main([*base, "--plot", str(tmp_path / "h.png"), "--format", "png,pdf"]) == 0
    assert _is("png", tmp_path / "h.png") and _is("pdf", tmp_path / "h.pdf")
    assert f"plot: {tmp_path / 'h.png'}, {tmp_path / 'h.pdf'}" in capsys.readouterr().out
    assert cli.main([*base, "--plot", str(tmp_path / "h.gif")]) == 2
    assert "end the file name in .png, .pdf, .svg" in capsys.readouterr().err


# ---------------------------------------------------------------- progress


def test_off_a_terminal_progress_is_periodic_log_lines(caplog):
    with caplog.at_level(logging.INFO, logger="isotpp"):
        with progress(4, "seed 0: base", unit="ep", tty=False, interval=0) as bar:
            for i in range(4):
                bar.set_postfix(loss=f"{1.0 / (i + 1):.2f}")
                bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all(r.name == "isotpp.progress" for r in caplog.records)
    assert lines[1].startswith("seed 0: base: 2/4 ep (50 %), ") and lines[1].endswith("loss=0.50")
    assert "eta" in lines[1] and "eta" not in lines[3] and lines[3].startswith("seed 0: base: 4/4 ep (100 %)")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="isotpp"):
        bar = progress(100, "short", tty=False, interval=3600)  # shorter than one interval: no line at all
        for _ in range(100):
            bar.update()
        bar.close()
        progress(5, "silent", enabled=False, tty=False, interval=0).update(5)
        beat = progress(10, "long", tty=False, interval=0)
        beat.update(4)  # one beat ...
        beat.interval = 3600
        beat.update(6)
        beat.close()  # ... then the final count, once
        beat.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["long: 4/10 it (40 %)", "long: 10/10 it (100 %)"]


def test_on_a_terminal_progress_is_a_tqdm_bar():
    from tqdm import tqdm

    bar = progress(3, "x", tty=True)
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress(3, "x", tty=False), LogProgress)
