"""The ``search`` command's options for filters and richer queries, and what they become:
a :class:`~lookalike.search.filters.Filter` and a :class:`~lookalike.search.queries.Crop`."""

from __future__ import annotations

import argparse

from ..search.filters import Filter
from ..search.queries import Crop


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The filter and query options of ``lookalike search``."""
    g = p.add_argument_group("filters (only items that pass every one are returned: the true "
                             "k nearest among them)")
    g.add_argument("--in", dest="paths", action="append", metavar="GLOB",
                   help="only files whose path matches GLOB ('trips/2024/*', '*.png', a folder "
                        "name, /abs/path/*; '*' crosses folders); repeat for several")
    g.add_argument("--after", metavar="DATE",
                   help="taken at or after DATE (EXIF date taken, else the file's modification "
                        "time): YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    g.add_argument("--before", metavar="DATE", help="taken before DATE (same forms)")
    g.add_argument("--label", dest="labels", action="append", metavar="NAME",
                   help="only items with this label (a label name or number); repeat for several")
    g.add_argument("--camera", metavar="TEXT", help="camera make or model contains TEXT")
    gps = g.add_mutually_exclusive_group()
    gps.add_argument("--has-gps", dest="has_gps", action="store_const", const=True,
                     help="only photos with a GPS position")
    gps.add_argument("--no-gps", dest="has_gps", action="store_const", const=False,
                     help="only photos without one")
    q = p.add_argument_group("richer queries")
    q.add_argument("--together", action="store_true",
                   help="the QUERYs are examples of ONE search (their mean), not one search each")
    q.add_argument("--not", dest="unlike", action="append", metavar="QUERY",
                   help="a counter-example: results move away from it (implies --together); "
                        "repeat for several")
    q.add_argument("--crop", type=_crop, metavar="X,Y,W,H",
                   help="search with this region of each query picture: left, top, width, "
                        "height as fractions, e.g. 0.5,0,0.5,1 for its right half")


def _crop(text: str) -> Crop:
    from ..errors import LookalikeError

    try:
        return Crop.parse(text)
    except LookalikeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def filter_of(args: argparse.Namespace) -> Filter:
    """The filter the options ask for (it passes everything when none is given)."""
    return Filter(paths=tuple(args.paths or ()), after=args.after, before=args.before,
                  labels=tuple(args.labels or ()), camera=args.camera, has_gps=args.has_gps)
