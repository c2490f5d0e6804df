"""Tests for the command line, run in-process through lookalike.app.cli.main."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli as run
from lookalike.app.cli import build_parser, main
from lookalike.data.datasets import load_dataset
from lookalike.search.collection import Collection

if TYPE_CHECKING:
    from conftest import Trained

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SUBCOMMANDS = ("serve", "add", "sync", "remove", "duplicates", "train", "index", "search", "evaluate",
               "cluster", "denoise", "report", "info", "demo", "verify", "compact", "migrate")


def assert_user_error(result: tuple[int, str, str], *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting with 'lookalike', no traceback."""
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lookalike"), err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- user errors


def test_train_on_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    line = assert_user_error(run(capsys, ["train", "--dataset", missing, "--epochs", "1",
                                          "--out", tmp_path / "m"]), str(missing))
    assert "nor an existing path" in line
    assert not (tmp_path / "m").exists()


def test_train_on_empty_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run(capsys, ["train", "--dataset", empty, "--out", tmp_path / "m"]),
                      "no image files found")


def test_train_on_folder_of_non_images(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.csv").write_text("1,2,3")
    assert_user_error(run(capsys, ["train", "--dataset", folder, "--out", tmp_path / "m"]),
                      "no image files found")


def test_unknown_dataset_name(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_user_error(run(capsys, ["train", "--dataset", "imagenet-22k", "--out", "m"]),
                      "imagenet-22k", "neither a built-in dataset")


def test_search_missing_collection(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_user_error(run(capsys, ["search", tmp_path / "nope", "id:0"]), "does not exist")


def test_search_directory_that_is_not_a_collection(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    assert_user_error(run(capsys, ["search", tmp_path, "id:0"]),
                      "not a lookalike collection")


def test_index_with_a_non_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_user_error(run(capsys, ["index", "--model", tmp_path, "--dataset", "digits",
                                   "--out", tmp_path / "c"]), "not a lookalike model")
    assert not (tmp_path / "c").exists()


def test_index_with_truncated_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      trained: Trained) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained.model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_user_error(run(capsys, ["index", "--model", broken, "--dataset", "digits",
                                   "--out", tmp_path / "c"]), str(weights))


@pytest.mark.parametrize("k", ["0", "-3", "abc"])
def test_search_bad_k(capsys: pytest.CaptureFixture[str], trained: Trained, k: str) -> None:
    assert_user_error(run(capsys, ["search", trained.collection, "id:0", "-k", k]),
                      "lookalike search: error: argument -k")


def test_search_query_that_is_nothing(capsys: pytest.CaptureFixture[str],
                                      trained: Trained) -> None:
    assert_user_error(run(capsys, ["search", trained.collection, "no-such-thing.png"]),
                      "'no-such-thing.png' is not an image file, id:N, or DATASET")


def test_search_unknown_id(capsys: pytest.CaptureFixture[str], trained: Trained) -> None:
    assert_user_error(run(capsys, ["search", trained.collection, "id:999999"]),
                      "no item with id 999999")


def test_search_dataset_index_out_of_range(capsys: pytest.CaptureFixture[str],
                                           trained: Trained) -> None:
    assert_user_error(run(capsys, ["search", trained.collection, "digits:queries:359"]),
                      "has 359 items")


def test_search_corrupt_query_image(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    trained: Trained) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert_user_error(run(capsys, ["search", trained.collection, bad]), str(bad))


def test_search_with_another_model(capsys: pytest.CaptureFixture[str], trained: Trained) -> None:
    assert_user_error(run(capsys, ["search", trained.collection, "id:0",
                                   "--model", trained.other_model]), "another model")


def test_search_in_cluster_without_clustering(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, trained: Trained) -> None:
    coll = tmp_path / "coll"
    shutil.copytree(trained.collection, coll)
    (coll / "clusters.npz").unlink(missing_ok=True)
    assert_user_error(run(capsys, ["search", coll, "id:0", "--in-cluster"]),
                      "run 'lookalike cluster' first")


def test_evaluate_on_neither(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_user_error(run(capsys, ["evaluate", tmp_path, "--dataset", "digits"]),
                      "neither 'pixels', a model directory nor a collection")


def test_train_zero_epochs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_user_error(run(capsys, ["train", "--dataset", "digits", "--epochs", "0",
                                   "--out", tmp_path / "m"]), "--epochs")
    assert not (tmp_path / "m").exists()


def test_train_unknown_arch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_user_error(run(capsys, ["train", "--dataset", "digits", "--arch", "nope",
                                   "--out", tmp_path / "m"]), "--arch", "nope")


def test_index_existing_collection_needs_overwrite(capsys: pytest.CaptureFixture[str],
                                                   trained: Trained) -> None:
    assert_user_error(run(capsys, ["index", "--model", trained.model, "--dataset", "digits",
                                   "--out", trained.collection]), "--overwrite")


def test_broken_pipe_exits_quietly(monkeypatch: pytest.MonkeyPatch, trained: Trained) -> None:
    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    class Stderr(io.StringIO):
        def close(self) -> None:  # main may close stderr; keep what was written readable
            pass

    monkeypatch.setattr("lookalike.app.cli.cmd_info", broken)
    err = Stderr()
    monkeypatch.setattr("sys.stderr", err)
    assert main(["info", str(trained.collection)]) == 0
    assert "error" not in err.getvalue()


# ---------------------------------------------------------------------------- happy paths


def test_train_writes_a_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "model"
    code, stdout, err = run(capsys, ["train", "--dataset", "digits", "--epochs", "1",
                                     "--device", "cpu", "--out", out])
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "loss.png"}
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "lookalike-model"
    assert config["model"]["input"] == {"channels": 1, "height": 8, "width": 8}
    assert config["train"]["epochs"] == 1
    assert len(config["history"]["train_loss"]) == 1
    assert config["history"]["dataset"] == "digits"
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert f"model written to {out}" in stdout
    assert config["fingerprint"][:12] in stdout


def test_index_writes_a_collection(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   trained: Trained) -> None:
    out = tmp_path / "coll"
    code, stdout, err = run(capsys, ["index", "--model", trained.model, "--dataset", "digits",
                                     "--out", out])
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert names >= {"manifest.json", "metadata.sqlite", "segments", "model"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 1438
    assert manifest["dataset"] == {"name": "digits", "split": "database"}
    model_config = json.loads((trained.model / "config.json").read_text())
    assert manifest["model"]["fingerprint"] == model_config["fingerprint"]
    embeddings = np.load(out / "segments" / "000000.codes.npy")
    assert embeddings.shape == (1438, manifest["dim"]) and np.all(np.isfinite(embeddings))
    assert f"collection written to {out}: 1438 images" in stdout


def _search_json(capsys: pytest.CaptureFixture[str], argv: Sequence[object]) -> dict:
    code, stdout, err = run(capsys, [*argv, "--json"])
    assert code == 0, err
    return json.loads(stdout)


def test_search_dataset_item_json(capsys: pytest.CaptureFixture[str], trained: Trained) -> None:
    result = _search_json(capsys, ["search", trained.collection, "digits:queries:0", "-k", "7"])
    assert result["k"] == 7 and len(result["queries"]) == 1
    query = result["queries"][0]
    assert query["query"] == "digits:queries:0"
    assert query["label"] == int(load_dataset("digits", "queries").labels[0])
    hits = query["results"]
    assert [h["rank"] for h in hits] == list(range(1, 8))
    distances = [h["distance"] for h in hits]
    assert distances == sorted(distances) and distances[0] >= 0
    assert len({h["id"] for h in hits}) == 7
    assert all(h["source"].startswith("digits:database:") for h in hits)
    assert all(h["label_name"] == str(h["label"]) for h in hits)


def test_search_by_id_excludes_itself(capsys: pytest.CaptureFixture[str],
                                      trained: Trained) -> None:
    result = _search_json(capsys, ["search", trained.collection, "id:3", "-k", "5"])
    ids = [h["id"] for h in result["queries"][0]["results"]]
    assert len(ids) == 5 and 3 not in ids


def test_search_image_file_excludes_its_stored_copy(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, trained: Trained) -> None:
    stored = Collection.open(trained.collection).image(12)
    path = tmp_path / "q.png"
    Image.fromarray(np.asarray(stored)[:, :, 0]).save(path)
    result = _search_json(capsys, ["search", trained.collection, path, "-k", "3"])
    query = result["queries"][0]
    assert query["label"] is None
    assert 12 not in [h["id"] for h in query["results"]]
    assert len(query["results"]) == 3


def test_search_text_output(capsys: pytest.CaptureFixture[str], trained: Trained) -> None:
    code, stdout, err = run(capsys, ["search", trained.collection, "id:0", "id:1", "-k", "2"])
    assert code == 0, err
    assert "query id:0" in stdout and "query id:1" in stdout
    assert stdout.count("digits:database:") == 4


def test_search_figure(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                       trained: Trained) -> None:
    fig = tmp_path / "f.png"
    code, stdout, err = run(capsys, ["search", trained.collection, "digits:queries:1", "id:5",
                                     "-k", "4", "--figure", fig])
    assert code == 0, err
    with Image.open(fig) as im:
        assert im.format == "PNG" and min(im.size) > 50
    assert f"figure written to {fig}" in stdout


def test_evaluate_pixels_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(capsys, ["evaluate", "pixels", "--dataset", "digits", "--json"])
    assert code == 0, err
    metrics = json.loads(stdout)
    for key in ("mAP", "P@1", "P@10", "P@100"):
        assert 0 <= metrics[key] <= 1
    assert metrics["LRAP@n"]["n"] == [1, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert len(metrics["LRAP@n"]["value"]) == 9
    # P@1 by a brute-force nearest neighbour on the raw pixels
    q = load_dataset("digits", "queries")
    db = load_dataset("digits", "database")
    qx = q.images.reshape(len(q), -1).astype(np.int64)
    dx = db.images.reshape(len(db), -1).astype(np.int64)
    d = (qx**2).sum(1)[:, None] - 2 * qx @ dx.T + (dx**2).sum(1)[None, :]
    nearest = np.argmin(d, axis=1)
    p1 = float(np.mean(db.labels[nearest] == q.labels))
    assert metrics["P@1"] == pytest.approx(p1, abs=2 / len(q))
    assert metrics["P@1"] > 0.9 > metrics["mAP"] > 0.3


def test_cluster_then_search_in_cluster(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        trained: Trained) -> None:
    coll = tmp_path / "coll"
    shutil.copytree(trained.collection, coll)
    code, stdout, err = run(capsys, ["cluster", coll, "--k", "5", "--k-max", "4",
                                     "--sample", "200", "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["k"] == 5 and result["chosen_by"] == "argument"
    assert len(result["cluster_sizes"]) == 5 and sum(result["cluster_sizes"]) == 1438
    assert 0 <= result["recall@10_vs_exact"] <= 1
    assert result["queries"] == 200
    assert (coll / "clusters.npz").is_file()
    found = _search_json(capsys, ["search", coll, "id:3", "-k", "4", "--in-cluster"])
    hits = found["queries"][0]["results"]
    assert 0 < len(hits) <= 4 and 3 not in [h["id"] for h in hits]
    with np.load(coll / "clusters.npz") as z:
        assignment = z["assignment"]
    assert {int(assignment[h["id"]]) for h in hits} == {int(assignment[3])}


def test_info_json(capsys: pytest.CaptureFixture[str], trained: Trained) -> None:
    code, stdout, err = run(capsys, ["info", trained.collection, "--json"])
    assert code == 0, err
    info = json.loads(stdout)
    assert info["count"] == 1438 and info["path"] == str(trained.collection)
    assert info["dim"] == len(Collection.open(trained.collection).embeddings[0])
    assert info["dataset"] == {"name": "digits", "split": "database"}
    assert info["backend"]["factory"] == "Flat" and info["index"] == "Flat"
    assert info["rerank"] == "diffusion" and info["generation"] == 0
    assert info["size_bytes"] > 0 and info["skipped"] == 0


def test_denoise(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "dae"
    code, _, err = run(capsys, ["-q", "train", "--arch", "conv-16-8-8", "--dataset", "digits",
                                "--epochs", "1", "--out", model])
    assert code == 0, err
    out = tmp_path / "x.png"
    code, stdout, err = run(capsys, ["denoise", model, "--dataset", "digits",
                                     "--n", "4", "--out", out])
    assert code == 0, err
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert f"figure written to {out}" in stdout


def test_denoise_refuses_an_untrained_decoder(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              trained: Trained) -> None:
    from lookalike.models.modelio import load_model
    from lookalike.models.reconstruct import has_trained_decoder

    if has_trained_decoder(load_model(trained.model)):
        pytest.skip("the default recipe trains its decoder")
    code, _, err = run(capsys, ["denoise", trained.model, "--dataset", "digits",
                                "--out", tmp_path / "x.png"])
    assert code == 2 and "decoder is untrained" in err and "Traceback" not in err


def test_subcommand_list_is_complete() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help(capsys: pytest.CaptureFixture[str], command: str | None) -> None:
    code, stdout, err = run(capsys, ["--help"] if command is None else [command, "--help"])
    assert code == 0, err
    assert stdout.startswith("usage: lookalike" + ("" if command is None else f" {command}"))


def test_add_and_remove_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 trained: Trained) -> None:
    coll = tmp_path / "c"
    shutil.copytree(trained.collection, coll)
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"n{i}.png")
    (folder / "bad.png").write_bytes(b"not an image")
    code, out, err = run(capsys, ["add", coll, folder])
    assert code == 0, err
    assert "added 3 image(s)" in out and "1 skipped" in out
    code, out, _ = run(capsys, ["add", coll, folder / "n0.png"])
    assert code == 0 and "added 0 image(s)" in out and "1 already there by path" in out
    shutil.copy(folder / "n0.png", tmp_path / "copy.png")
    code, out, _ = run(capsys, ["add", coll, tmp_path / "copy.png"])
    assert code == 0 and "added 0 image(s)" in out and "1 by content" in out
    # --update: a changed file keeps its id, gets its new pixels and code
    from lookalike.search.collection import Collection

    before = Collection.open(coll)
    n1 = before.sources()[str(folder / "n1.png")][0]
    n2 = before.sources()[str(folder / "n2.png")][0]
    old_code = before.vector(n2).copy()
    new_pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(new_pixels).save(folder / "n2.png")
    code, out, _ = run(capsys, ["add", coll, folder])
    assert code == 0 and "0 updated" in out  # without --update, a known path is left alone
    code, out, _ = run(capsys, ["add", coll, folder, "--update"])
    assert code == 0 and "1 updated" in out and "added 0" in out, out
    after = Collection.open(coll)
    assert len(after) == len(before) and after.sources()[str(folder / "n2.png")][0] == n2
    assert not np.allclose(after.vector(n2), old_code)
    # the stored pixels and code are the new file's, and the index holds that code
    assert np.array_equal(after.image(n2)[:, :, 0], new_pixels)
    fresh = after.encoder.encode(new_pixels[None, :, :, None])[0]
    assert np.allclose(after.vector(n2), fresh, atol=1e-5)
    d, i = after.search(fresh[None], 1, rerank=False)
    assert i[0, 0] == n2 and d[0, 0] < 1e-6

    def near_copy(name: str) -> Path:
        """The file's pixels with one of them moved by 1: not the stored content, so not
        excluded as the query's own stored copy, but nearest to it."""
        pixels = np.asarray(Image.open(folder / name)).copy()
        pixels[0, 0] = pixels[0, 0] + 1 if pixels[0, 0] < 255 else 254
        path = tmp_path / f"near-{name}"
        Image.fromarray(pixels).save(path)
        return path

    def first_hit(query: Path) -> dict:
        code, out, err = run(capsys, ["search", coll, query, "-k", "3", "--json", "--exact"])
        assert code == 0, err
        return json.loads(out)["queries"][0]["results"][0]

    # the added (and the updated) image is found: a near copy of it finds it first
    for name, item in (("n1.png", n1), ("n2.png", n2)):
        hit = first_hit(near_copy(name))
        assert (hit["id"], hit["source"]) == (item, str(folder / name)), hit
    # searching with the file itself excludes its stored copy, as for any stored item
    code, out, _ = run(capsys, ["search", coll, folder / "n1.png", "-k", "3", "--json", "--exact"])
    assert code == 0 and n1 not in [h["id"] for h in json.loads(out)["queries"][0]["results"]]
    code, out, err = run(capsys, ["remove", coll, "0", "--source", f"{folder}/n*.png"])
    assert code == 0, err
    assert "removed 4 item(s)" in out
    # removed: no longer found, not even by a near copy, and unknown as an id
    assert first_hit(near_copy("n1.png"))["id"] not in (n1, n2)
    assert_user_error(run(capsys, ["search", coll, f"id:{n1}"]), f"no item with id {n1}")
    assert n1 not in Collection.open(coll).ids
    code, _, err = run(capsys, ["remove", coll, "--source", "nothing-matches-*"])
    assert code == 2 and err.count("\n") == 1
    code, _, err = run(capsys, ["add", coll, tmp_path / "missing.png"])
    assert code == 2 and "does not exist" in err


# ---------------------------------------------------------------------------- README promises
def _evaluate_json(capsys: pytest.CaptureFixture[str], *argv: object) -> dict:
    code, out, err = run(capsys, ["evaluate", *argv, "--dataset", "digits", "--json"])
    assert code == 0, err
    return json.loads(out)


def _metrics_table(html: str) -> dict[str, dict[str, float]]:
    """The report's metrics table: row name -> {column: value as shown}."""
    found = re.search(r'<table class="metrics">(.*?)</table>', html, re.S)
    assert found, "no metrics table"
    head, body = found.group(1).split("</thead>")
    columns = re.findall(r"<th>([^<]*)</th>", head)[1:]
    return {name: dict(zip(columns, [float(re.sub(r"<[^>]+>", "", cell)) for cell in
                                     re.findall(r'<td class="num">(.*?)</td>', cells)], strict=True))
            for name, cells in re.findall(r"<tr><th>([^<]*)</th>(.*?)</tr>", body)}


def test_report_command(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                        exact_collection: Path) -> None:
    """`lookalike report`: one self-contained HTML page with the collection's and raw pixels'
    metrics (those `evaluate` gives) and the figures embedded."""
    out = tmp_path / "pages" / "report.html"
    code, stdout, err = run(capsys, ["report", "--collection", exact_collection,
                                     "--dataset", "digits", "--out", out])
    assert code == 0, err
    assert f"report written to {out}" in stdout
    html = out.read_text(encoding="utf-8")
    table = _metrics_table(html)
    for row, target in (("model", exact_collection), ("pixels", "pixels")):
        metrics = _evaluate_json(capsys, target)
        assert table[row] == {key: round(metrics[key], 3) for key in ("mAP", "P@1", "P@10", "P@100")}
    figures = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(figures) >= 4  # loss curves, reconstructions, query grid, LRAP@n at least
    assert all(base64.b64decode(f).startswith(b"\x89PNG\r\n\x1a\n") for f in figures)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from elsewhere


def test_evaluate_exact_ranks_by_plain_code_distance(capsys: pytest.CaptureFixture[str],
                                                     trained: Trained) -> None:
    """`evaluate --exact`: the exact Euclidean ranking of the codes, without the collection's
    re-ranking (computed here independently, scored with scikit-learn)."""
    from sklearn.metrics import label_ranking_average_precision_score

    from lookalike.models.encoders import encode_dataset
    from lookalike.search.collection import Collection

    exact = _evaluate_json(capsys, trained.collection, "--exact")
    reranked = _evaluate_json(capsys, trained.collection)
    coll = Collection.open(trained.collection)
    queries = load_dataset("digits", "queries")
    q = encode_dataset(coll.encoder, queries).astype(np.float64)
    db = np.asarray(coll.embeddings, dtype=np.float64)
    dist = (q**2).sum(1)[:, None] - 2 * q @ db.T + (db**2).sum(1)[None, :]
    relevant = queries.labels[:, None] == coll.labels()[None, :]
    assert exact["mAP"] == pytest.approx(label_ranking_average_precision_score(relevant, -dist),
                                         abs=1e-5)
    nearest = dist.argmin(axis=1)
    assert exact["P@1"] == pytest.approx(relevant[np.arange(len(q)), nearest].mean(), abs=1e-9)
    assert reranked["mAP"] > exact["mAP"] + 0.01  # the default is the diffusion ranking


def test_index_report_goes_where_asked(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       trained: Trained) -> None:
    """`index --report PATH`: the skipped files are listed there (written afresh), not in the
    collection; with nothing skipped the report is still written, empty."""
    from lookalike.data.skipreport import read_report

    folder = tmp_path / "images"
    folder.mkdir()
    digits = load_dataset("digits", "queries").images
    for i in range(12):
        Image.fromarray(digits[i, :, :, 0]).save(folder / f"d{i:02d}.png")
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    report = tmp_path / "logs" / "skips.jsonl"
    report.parent.mkdir()
    report.write_text('{"path": "stale", "reason": "an old run", "command": "index", "time": "x"}\n')
    coll = tmp_path / "coll"
    code, out, err = run(capsys, ["index", "--model", trained.model, "--dataset", folder,
                                  "--out", coll, "--report", report])
    assert code == 0, err
    assert out.strip() == (f"collection written to {coll}: 12 images, 128-d codes; "
                           f"skipped 1 file(s) (see {report})")
    entries = read_report(report)
    assert [(e["path"], e["command"]) for e in entries] == [(str(broken), "index")]
    assert entries[0]["reason"]
    assert not (coll / "skipped.jsonl").exists()
    broken.unlink()
    code, out, err = run(capsys, ["index", "--model", trained.model, "--dataset", folder,
                                  "--out", coll, "--report", report, "--overwrite"])
    assert code == 0, err
    assert "skipped" not in out and report.read_text() == ""


def test_epochs_derive_from_the_budget(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The recipe trains for enough epochs to see `--budget` images: round(budget / training
    images), so a four times smaller dataset gets four times the epochs; `--epochs` wins."""
    runs = {}
    for split, argv in (("database", []), ("queries", []), ("database", ["--epochs", "1"])):
        out = tmp_path / f"m-{split}-{len(argv)}"
        code, _, err = run(capsys, ["-q", "train", "--dataset", "digits", "--split", split,
                                    "--budget", "2600", "--device", "cpu", "--out", out, *argv])
        assert code == 0, err
        config = json.loads((out / "config.json").read_text())
        runs[split, len(argv)] = config
    for split, n in (("database", 1438), ("queries", 359)):
        config = runs[split, 0]
        n_train = n - round(n * 0.1)  # the validation split is held out
        assert config["history"]["n_train"] == n_train and config["train"]["budget"] == 2600
        epochs = round(2600 / n_train)
        assert config["train"]["epochs"] == epochs == len(config["history"]["train_loss"])
    assert [runs[s, 0]["train"]["epochs"] for s in ("database", "queries")] == [2, 8]
    assert runs["database", 2]["train"]["epochs"] == 1 == len(runs["database", 2]["history"]["train_loss"])
