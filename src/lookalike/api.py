"""The library's front door: train a model, index a collection, search it, score it.

    import lookalike as la
    coll = la.index("photos/", out="coll")             # trains the default model first
    model = la.train("photos/", out="model")          # or choose: la.load_model("model")
    coll = la.index(model, "photos/", out="coll2")     # or la.open("coll")
    hits = coll.search("query.jpg", k=10)             # paths, arrays or PIL images
    hits = coll.search(["a.jpg", "b.jpg"], together=True, unlike=["c.jpg"],
                       where=la.Filter(paths=["trips/*"], after="2024-03"), crop=(0, 0, 0.5, 1))
    coll.add(["new/"]); coll.remove([12])
    la.evaluate("coll", "mnist-5k")

Data is a built-in dataset's name, a folder of images, an IDX directory or an ``.npz`` (see
:func:`lookalike.data.datasets.load_dataset`). The command line calls these same functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import (
    BACKBONE_ARCHS,
    ModelConfig,
    RetrievalConfig,
    adaptation_budget,
    adapts_by_default,
    choose_arch,
    default_mid_blocks,
    default_retrieval_config,
    default_train_config,
    input_for,
)
from .data.datasets import BUILTIN_DATASETS, Dataset, folder_images, infer_spec, is_folder, load_dataset
from .errors import LookalikeError
from .search.filters import Filter
from .search.queries import Crop

if TYPE_CHECKING:
    from .models.modelio import LoadedModel

__all__ = ["Crop", "Filter", "Hit", "Index", "evaluate", "index", "load_model", "open", "train"]  # noqa: F822 (load_model: __getattr__)

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``load_model`` (:func:`lookalike.models.modelio.load_model`), imported on first use:
    PyTorch loads with it, so a collection that encodes with ONNX Runtime is opened, searched
    and added to through this module without PyTorch."""
    if name == "load_model":
        from .models.modelio import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _data(data: str | os.PathLike[str] | Dataset, split: str | None, spec: Any = None,
          progress: bool = False, **options: Any) -> Dataset:
    if isinstance(data, Dataset):
        return data
    name = os.fspath(data)
    split = split or ("database" if name in BUILTIN_DATASETS else "all")
    return load_dataset(name, split, input_spec=spec, progress=progress, **options)


def train(data: str | os.PathLike[str] | Dataset, out: str | os.PathLike[str], *,
          arch: str = "auto", size: tuple[int, int] | None = None, channels: int | None = None,
          latent_dim: int | None = None, width: int | None = None, adapt: bool | None = None,
          pooling: str | None = None, test_views: str | None = None,
          mid_blocks: tuple[int, ...] | None = None,
          rerank: str | None = None, split: str | None = None, data_dir: str | None = None,
          download: bool = False, progress: bool = False, **train_options: Any) -> LoadedModel:
    """Train (or, for a pretrained backbone, fit) a model on ``data`` and save it to ``out``.

    ``arch="auto"`` chooses by the data without labels (:func:`config.choose_arch`): a
    pretrained backbone for colour or large images, the self-trained recipe for small grey
    ones; the input size follows the model (:func:`config.input_for`) unless ``size``
    ``(h, w)`` / ``channels`` say otherwise. ``adapt`` fine-tunes a backbone on ``data``
    first, for ``time_budget`` seconds (default :func:`config.adaptation_budget`: 0.045 s
    an image, 30-300 s); ``adapt=None`` adapts from 1,000 images on
    (:func:`config.adapts_by_default`). ``pooling``, ``test_views`` and ``mid_blocks`` set a
    backbone's :class:`ModelConfig` fields of those names (``mid_blocks=None``: the
    backbone's default, :func:`config.default_mid_blocks`; ``()``: none). ``train_options``
    override :class:`TrainConfig` fields (``epochs``, ``seed``, ``budget``...). A built-in
    dataset trains on its database split.

    Raises:
        LookalikeError: bad data or options (subclasses name which).
    """
    from .models.modelio import save_model

    folder = not isinstance(data, Dataset) and is_folder(data)
    load = {"data_dir": data_dir, "download": download}
    ds = None if folder else _data(data, split, progress=progress, **load)
    if ds is None:
        assert not isinstance(data, Dataset)
        native = infer_spec(folder_images(Path(os.fspath(data))))
    else:
        native = ds.spec
    arch = choose_arch(native) if arch == "auto" else arch
    config = ModelConfig(arch=arch, input=input_for(arch, native, size, channels),
                         latent_dim=latent_dim, width=width or ModelConfig.width,
                         pooling=pooling or ModelConfig.pooling,
                         test_views=test_views or ModelConfig.test_views,
                         mid_blocks=default_mid_blocks(arch) if mid_blocks is None else mid_blocks)
    if ds is None:
        ds = _data(data, split, config.input, progress=progress, **load)
    backbone = arch in BACKBONE_ARCHS
    if adapt and not backbone:
        raise LookalikeError(f"adapt is for a pretrained backbone, not {arch}")
    objective = train_options.pop("objective", None)
    if backbone and objective is None:
        adapt = adapts_by_default(len(ds)) if adapt is None else adapt
        objective = "contrastive" if adapt else "pretrained"
    if objective == "contrastive" and backbone and train_options.get("time_budget") is None \
            and train_options.get("epochs") is None:
        train_options["time_budget"] = adaptation_budget(len(ds))
    if objective == ("reconstruction" if backbone else "pretrained"):
        raise LookalikeError(f"the {objective} objective does not fit {arch}")
    tconf = default_train_config(arch, objective=objective, **train_options)
    retrieval = default_retrieval_config(arch)
    if rerank:
        retrieval = RetrievalConfig(rerank=rerank, diffusion=retrieval.diffusion)
    if backbone:
        from .models.adaptation import train_backbone

        result = train_backbone(ds, config, tconf, progress=progress)
    else:
        from .models.training import train_autoencoder

        result = train_autoencoder(ds.pixels(0, len(ds), config.input), config, tconf,
                                   progress=progress)
    model = save_model(out, result.model, result.train,
                       {**result.history, "dataset": ds.name, "split": ds.split}, retrieval)
    if result.history.get("train_loss"):
        from .app import figures

        figures.save(figures.loss_curves(result.history, result.history.get("best_epoch")),
                     Path(out) / "loss.png")
    return model


@dataclass(frozen=True)
class Hit:
    """One search result: the item's ``id``, its ``distance`` to the query (smaller is
    nearer), where it came from (``source``) and its ``label`` (-1 when unknown)."""

    id: int
    distance: float
    source: str
    label: int


class Index:
    """A collection opened for scripting: search by images, add and remove items.
    ``collection`` is the underlying :class:`lookalike.search.collection.Collection`."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def __len__(self) -> int:
        return len(self.collection)

    def search(self, queries: Any, k: int = 10, exact: bool = False, *,
               where: Filter | None = None, together: bool = False, unlike: Any = None,
               crop: Crop | Sequence[float] | str | None = None) -> list[list[Hit]]:
        """The ``k`` nearest items to each query, nearest first: one list of :class:`Hit`
        per query. ``queries``: an image path, a ``uint8 (H, W, C)`` array, a PIL image, a
        stored item's id (``int``), or a list of those. A query that is a stored image is
        not returned as its own result. ``exact`` skips the collection's re-ranking.

        ``where``: only items passing this :class:`Filter` (paths, dates, labels, camera,
        GPS), the true ``k`` nearest of them; ``together``: the queries are examples of one
        search (one list comes back); ``unlike``: counter-examples, in the same forms,
        that the results move away from (implies ``together``); ``crop``: search with this
        region of each query, ``(x, y, w, h)`` in fractions (:class:`Crop`), of a stored
        item's original file when it has one.
        """
        from .search import queries as rich

        coll = self.collection
        box = None if crop is None else crop if isinstance(crop, Crop) else Crop.parse(crop)
        codes, own = _codes(coll, queries if _many(queries) else [queries], box)
        excluded = [[int(i)] for i in own]
        if together or unlike is not None:
            neg = own_neg = None
            if unlike is not None:
                neg, own_neg = _codes(coll, unlike if _many(unlike) else [unlike], None)
            codes = rich.combine(codes, neg)[None]
            excluded = [[int(i) for i in (*own, *(own_neg if own_neg is not None else ()))]]
        dist, ids = rich.search(coll, codes, k, where=where, exclude=excluded,
                                rerank=False if exact else None)
        out = []
        for drow, irow in zip(dist, ids, strict=True):
            items = coll.items(irow)
            out.append([Hit(it.id, float(d), it.source, it.label)
                        for d, it in zip(drow, items, strict=True) if it is not None])
        return out

    def add(self, paths: Iterable[str | os.PathLike[str]]) -> np.ndarray:
        """Add image files and folders (recursively); returns the ids, ``int64 (n,)``.
        Unreadable files and other extensions are skipped (logged); a path that does not
        exist raises :class:`DataError`."""
        from .data.images import image_files
        from .data.pipeline import stream
        from .models.atonce import batches_at_once
        from .search.files import record

        ids = [np.empty(0, dtype=np.int64)]
        # a commit per batch, the next one decoding while this one is encoded (as index does)
        with batches_at_once(self.collection.encoder):
            for batch in stream(image_files(paths), self.collection.encoder.spec, batch=1024, ahead=1):
                for path, reason in batch.skipped:
                    log.warning("skipped %s: %s", path, reason)
                if len(batch.paths):
                    sources = [str(f) for f in batch.paths]
                    ids.append(np.asarray(self.collection.add(batch.inputs, sources), dtype=np.int64))
                    record(self.collection, sources, ids[-1], batch.facts)
        return np.concatenate(ids)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove items by id (their catalogue rows too); returns how many were removed."""
        return int(self.collection.remove(ids))

    def close(self) -> None:
        self.collection.close()


def _codes(coll: Any, queries: Sequence[Any], crop: Crop | None) -> tuple[np.ndarray, np.ndarray]:
    """The codes ``float32 (m, d)`` of queries (images, paths or stored ids) and the id each
    stands for in the collection (-1: none), which its results leave out."""
    codes = np.empty((len(queries), coll.dim), np.float32)
    own = np.full(len(queries), -1, np.int64)
    pictures: dict[int, np.ndarray] = {}
    for row, q in enumerate(queries):
        if _is_id(q):
            from .search.queries import stored_region

            if crop is None:
                codes[row] = coll.vector(int(q))
            else:
                pictures[row] = stored_region(coll, int(q), crop)
            own[row] = int(q)
        else:
            spec = coll.encoder.spec
            whole = _image(q, None if crop else (spec.height, spec.width))
            pictures[row] = crop.apply(whole) if crop else whole
    if pictures:
        from .data.images import conform

        rows = sorted(pictures)
        images = conform([pictures[r] for r in rows], coll.encoder.spec)
        codes[rows] = coll.encoder.encode(images)
        stored = coll.stored_ids(images)
        own[rows] = np.where(own[rows] >= 0, own[rows], stored)
    return codes, own


def _is_id(query: Any) -> bool:
    return isinstance(query, (int, np.integer)) and not isinstance(query, bool)


def _many(queries: Any) -> bool:
    return isinstance(queries, (list, tuple)) or (isinstance(queries, np.ndarray) and queries.ndim == 4)


def _image(query: Any, size: tuple[int, int] | None) -> np.ndarray:
    """A query as ``uint8 (H, W, C)``; a file decoded as a collection's files are (``size``)."""
    from .data.images import decode_image, load_image

    if isinstance(query, (str, os.PathLike)):
        return load_image(query, size=size)
    if isinstance(query, np.ndarray):
        if query.ndim == 2:
            query = query[:, :, None]
        if query.ndim != 3 or query.dtype != np.uint8 or query.shape[2] not in (1, 3):
            raise LookalikeError(f"an image array must be uint8 (H, W, 1|3), got {query.dtype} "
                                 f"{query.shape}")
        return query
    if hasattr(query, "save") and hasattr(query, "mode"):  # a PIL image
        import io

        buf = io.BytesIO()
        query.save(buf, format="PNG")
        return decode_image(buf.getvalue())
    raise LookalikeError(f"a query must be an image path, array or PIL image, not {type(query).__name__}")


def _trained_model_dir(out: str | os.PathLike[str]) -> Path:
    """Where :func:`index` trains the model of a collection at ``out`` (beside it, hidden;
    the collection keeps its own copy, and this one is deleted once it is written)."""
    target = Path(out)
    return target.parent / f".{target.name}.model"


def model_for_index(model: LoadedModel | str | os.PathLike[str] | None,
                    data: str | os.PathLike[str] | Dataset, out: str | os.PathLike[str], *,
                    overwrite: bool = False, split: str | None = None, progress: bool = False,
                    **load: Any) -> LoadedModel:
    """The model :func:`index` encodes with: ``model`` loaded, or with ``None`` the default
    model for ``data`` trained now (:func:`train`'s rule, ``arch="auto"``: a pretrained
    backbone adapted to colour photos, the self-trained recipe for small grey images).

    Raises:
        CollectionError: ``out`` exists and not ``overwrite`` (checked before training).
    """
    if model is not None:
        from .models.modelio import LoadedModel, load_model

        return model if isinstance(model, LoadedModel) else load_model(model)
    from .errors import CollectionError

    if Path(out).exists() and not overwrite:
        raise CollectionError(f"{out} already exists; choose another --out or pass --overwrite")
    where = _trained_model_dir(out)
    if where.exists():  # a run cut short: train again
        import shutil

        shutil.rmtree(where)
    name = data.name if isinstance(data, Dataset) else os.fspath(data)
    log.info("step 1 of 2: training the default model for %s (no --model given)", name)
    trained = train(data, where, split=split, progress=progress, **load)
    log.info("step 2 of 2: indexing %s with it (%s)", name, trained.config.arch)
    return trained


def made_model(model: object, out: str | os.PathLike[str]) -> None:
    """After :func:`index` wrote its collection: delete the model trained for it (``model``
    None), which the collection keeps a copy of."""
    if model is None:
        import shutil

        shutil.rmtree(_trained_model_dir(out), ignore_errors=True)


def index(model: LoadedModel | str | os.PathLike[str] | Dataset | None = None,
          data: str | os.PathLike[str] | Dataset | None = None,
          out: str | os.PathLike[str] | None = None, *, split: str | None = None,
          overwrite: bool = False, progress: bool = False, data_dir: str | None = None,
          download: bool = False,
          encode: Callable[[LoadedModel, str, str], tuple[Dataset, np.ndarray]] | None = None,
          **options: Any) -> Index:
    """Encode ``data`` with ``model`` into a collection at ``out`` and open it (what
    ``lookalike index`` runs). ``options`` go to :meth:`Collection.create` (``factory``,
    ``backend``, ``chunk``...); ``data_dir`` and ``download`` to :func:`load_dataset` for a
    built-in dataset. ``encode(model, data, split)``, when given, reads and encodes ``data``
    itself (another engine: ``lookalike.models.ray_engine``) and returns the dataset and its
    codes.

    ``la.index("photos/", out="coll")`` (data alone, or ``model=None``) trains the default
    model for the data first (:func:`model_for_index`) and keeps it in the collection. A
    folder's files are decoded and encoded in one stream, each read once, and catalogued
    (:mod:`lookalike.search.files`) from that read; a collection made from a folder
    remembers it (absolute), for :func:`lookalike.search.sync.sync`.
    """
    from .data.pipeline import FolderFiles
    from .search.collection import Collection
    from .search.files import catalogue_items
    from .search.sync import remember_folders

    if data is None:  # index(data, out=...)
        model, data = None, model
    if data is None or out is None:
        raise LookalikeError("index needs data and out: la.index('photos/', out='coll')")
    assert not isinstance(model, Dataset)
    # a folder's path is made absolute: the sources, the catalogue and the folder remembered
    root = os.path.abspath(os.fspath(data)) if not isinstance(data, Dataset) and is_folder(data) else None
    data = data if root is None else root
    load = {"data_dir": data_dir, "download": download}
    loaded = model_for_index(model, data, out, overwrite=overwrite, split=split, progress=progress,
                             **load)
    codes = None
    ds: Dataset | FolderFiles
    if encode is not None and not isinstance(data, Dataset):
        name = os.fspath(data)
        ds, codes = encode(loaded, name, split or ("database" if name in BUILTIN_DATASETS else "all"))
    elif root is not None:  # decoded and encoded in one stream
        ds = FolderFiles.of(root, split or "all")
    else:
        ds = _data(data, split, loaded.config.input, progress=progress, **load)
    coll = Collection.create(out, loaded, ds, overwrite=overwrite, progress=progress, codes=codes,
                             **options)
    if not isinstance(ds, FolderFiles) and (root is not None or isinstance(data, Dataset)):
        catalogue_items(coll)  # (a folder's files streamed were catalogued as they were read)
    if root is not None:
        remember_folders(coll, [root])
    made_model(model, out)
    return Index(coll)


def open(path: str | os.PathLike[str]) -> Index:  # noqa: A001 - the verb users expect
    """Open the collection at ``path``."""
    from .search.collection import Collection

    return Index(Collection.open(path))


def evaluate(target: Index | str | os.PathLike[str], dataset: str, **options: Any) -> dict[str, Any]:
    """mAP, P@1/10/100 and LRAP@n of ``target`` (a collection, its path, a model directory or
    ``"pixels"``) on ``dataset``'s queries (see :func:`lookalike.search.evaluation.evaluate`)."""
    from .search.evaluation import evaluate as run

    where = target.collection.path if isinstance(target, Index) else target
    return run(where, dataset, **options)
