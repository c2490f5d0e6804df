"""The Python front door: the README's example runs as written, on a small colour folder."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lookalike as la
from lookalike.errors import LookalikeError

README = Path(__file__).resolve().parent.parent / "README.md"


def _photos(root: Path, kinds: dict[str, tuple[int, int, int]], n: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for kind, colour in kinds.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((60, 80, 3), colour, dtype=np.float64)
            y, x = rng.integers(10, 40), rng.integers(10, 60)
            img[y:y + 15, x:x + 15] = 255 - np.array(colour)
            img += rng.normal(0, 8, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / kind / f"{i}.jpg")


def test_readme_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lookalike")
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    _photos(tmp_path / "photos", {"beach": (230, 200, 120), "forest": (40, 120, 50)})
    _photos(tmp_path / "more-photos", {"snow": (240, 240, 250)}, n=2, seed=1)
    monkeypatch.chdir(tmp_path)
    held: list[dict[str, tuple[int, str]]] = []  # the collection's items when remove was called
    remove = la.Index.remove

    def spy_remove(self: la.Index, ids: np.ndarray) -> int:
        held.append(self.collection.sources())
        return remove(self, ids)

    monkeypatch.setattr(la.Index, "remove", spy_remove)
    ns: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), ns)  # noqa: S102 - our own README
    out = capsys.readouterr().out.splitlines()
    hits = [line.split() for line in out[:3]]
    beach = str(tmp_path / "photos" / "beach")
    assert len(hits) == 3 and all(h[2].startswith(beach + "/") for h in hits)  # beach finds beach
    assert f"{beach}/1.jpg" not in {h[2] for h in hits}  # not itself
    assert 0.5 <= float(out[3]) <= 1.0  # the mAP line
    # the two snow photos were added under two new ids, and those were removed again
    new_ids = ns["new_ids"]
    assert isinstance(new_ids, np.ndarray) and new_ids.dtype == np.int64
    assert len(held) == 1 and len(held[0]) == 12
    added = {src: i for src, (i, _) in held[0].items() if src.startswith("more-photos/")}
    assert sorted(added) == ["more-photos/snow/0.jpg", "more-photos/snow/1.jpg"]
    assert sorted(new_ids.tolist()) == sorted(added.values())
    coll = la.open("coll")
    assert len(coll) == 10 and not set(new_ids.tolist()) & set(coll.collection.ids.tolist())
    with pytest.raises(LookalikeError, match="a query must be"):
        coll.search(3.5)
    both = coll.search([np.asarray(Image.open("photos/forest/0.jpg")), Image.open("photos/beach/0.jpg")], k=2)
    assert [Path(h.source).parent.name for h in both[0]] == ["forest", "forest"]
    assert [Path(h.source).parent.name for h in both[1]] == ["beach", "beach"]
    # the model was trained for the folder and lives in the collection; the folder is remembered
    assert (tmp_path / "coll" / "model" / "config.json").is_file()
    assert not (tmp_path / ".coll.model").exists()
    assert coll.collection.manifest["folders"] == [str(tmp_path / "photos")]
    assert "step 1 of 2: training" in caplog.text and "step 2 of 2: indexing" in caplog.text
    coll.close()


def test_dir_lists_the_front_door() -> None:
    names = dir(la)
    assert {"index", "open", "train", "evaluate", "load_model", "Hit", "Index"} <= set(names)
    assert "__version__" in names and names == sorted(names)


def test_index_needs_data_and_out(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="needs data and out"):
        la.index("photos/")
    (tmp_path / "coll").mkdir()
    with pytest.raises(LookalikeError, match="already exists"):  # before any training
        la.index(tmp_path, out=tmp_path / "coll")
