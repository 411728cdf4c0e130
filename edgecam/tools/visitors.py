"""``edgecam visitors list|show|name|forget``: the visitor store of a state directory from the command line.

The store is ``<state_dir>/visitors.db`` of the config given with ``--config`` (its ``visitors.retention_days`` is
applied when the store opens, as the daemon does), or of ``--state-dir``. Naming moves the visitor's embeddings into
a gallery (``--gallery``, default the config's ``recognizer.gallery``): a running daemon reloads a gallery file that
changed, so the person is known from its next recognition on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edgecam import EdgecamError


def add_parser(sub: Any) -> None:
    """Register ``visitors`` and its actions on the CLI's subparsers."""
    p = sub.add_parser("visitors", help="repeat unknown faces: list, show, name or forget visitors")
    vsub = p.add_subparsers(dest="visitors_command", required=True, metavar="ACTION")
    v = vsub.add_parser("list", help="every visitor, the most recently seen first")
    v.add_argument("--json", action="store_true", help="one JSON document (default: text)")
    _store_options(v)
    v.set_defaults(func=cmd_list)
    v = vsub.add_parser("show", help="one visitor: visits, first/last seen, cameras; its best crop with --crop")
    v.add_argument("visitor", metavar="ID", help="visitor id (visitor-17)")
    v.add_argument("--crop", metavar="OUT.jpg", help="write the visitor's best crop (JPEG) there")
    v.add_argument("--json", action="store_true", help="JSON (default: text)")
    _store_options(v)
    v.set_defaults(func=cmd_show)
    v = vsub.add_parser("name", help="name a visitor: its embeddings join the gallery, the visitor is deleted")
    v.add_argument("visitor", metavar="ID", help="visitor id (visitor-17)")
    v.add_argument("name", metavar="NAME", help="the person's name (added to them when already enrolled)")
    v.add_argument("--gallery", help="gallery file, created when missing (default: the config's recognizer.gallery)")
    _store_options(v)
    v.set_defaults(func=cmd_name)
    v = vsub.add_parser("forget", help="delete visitors: rows, embeddings and crops")
    v.add_argument("visitors", nargs="*", metavar="ID", help="visitor ids (visitor-17 ...)")
    v.add_argument("--all", action="store_true", help="every visitor (default: only the ids given)")
    _store_options(v)
    v.set_defaults(func=cmd_forget)


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="daemon config: its state_dir and visitors section (default: --state-dir)")
    p.add_argument("--state-dir", help="state folder holding visitors.db (default: the config's state_dir, else "
                   "$STATE_DIRECTORY or ~/.local/state/edgecam)")


def _open(args: argparse.Namespace, must_exist: bool = True) -> Any:
    """The store named by ``--config`` / ``--state-dir`` (None when it does not exist and need not)."""
    from edgecam.config import load_config
    from edgecam.visitors import STORE_FILE, VisitorStore

    cfg = load_config(Path(args.config)) if args.config else None
    folder = Path(args.state_dir) if args.state_dir else cfg.state_dir if cfg else load_config(None).state_dir
    path = folder / STORE_FILE
    if not path.exists():
        if must_exist:
            raise EdgecamError(f"{path}: no visitor store (the daemon creates it with visitors.enabled: true)")
        return None
    v = cfg.visitors if cfg is not None else None
    return VisitorStore(path, retention_days=v.retention_days if v is not None else None,
                        fsync=v.fsync if v is not None else True)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _line(v: Any) -> str:
    crop = f"crop {v.crop_bytes / 1024:.1f} KB" if v.crop_bytes else "no crop"
    return (f"{v.id:<14} {v.visits:>3} visit{'s' if v.visits != 1 else ' '}  first {_when(v.first_seen)}  last "
            f"{_when(v.last_seen)}  cameras {','.join(v.cameras)}  {crop}")


def cmd_list(args: argparse.Namespace) -> int:
    """Print every visitor (none: a line saying so)."""
    store = _open(args, must_exist=False)
    visitors, stats = (store.visitors(), store.stats()) if store is not None else ([], {"visitors": 0, "bytes": 0})
    if store is not None:
        store.close()
    if args.json:
        print(json.dumps({"count": len(visitors), "bytes": stats["bytes"], "evicted": stats.get("evicted", 0),
                          "visitors": [v.as_dict() for v in visitors]}))
        return 0
    for v in visitors:
        print(_line(v))
    print(f"{len(visitors)} visitor{'s' if len(visitors) != 1 else ''} ({stats['bytes'] / 1024:.1f} KB)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one visitor; write its crop with ``--crop``."""
    store = _open(args)
    try:
        v = store.get(args.visitor)
        crop = store.crop(v.number) if args.crop else None
    finally:
        store.close()
    if args.crop:
        if crop is None:
            raise EdgecamError(f"{v.id} has no crop")
        Path(args.crop).write_bytes(crop)
    print(json.dumps(v.as_dict()) if args.json else _line(v) + (f"  -> {args.crop}" if args.crop else ""))
    return 0


def cmd_name(args: argparse.Namespace) -> int:
    """Move a visitor into the gallery under a name."""
    from edgecam.config import load_config
    from edgecam.recognize import Gallery, check_person_name
    from edgecam.visitors import name_visitor

    check_person_name(args.name)
    cfg = load_config(Path(args.config)) if args.config else None
    gallery_path = Path(args.gallery) if args.gallery else (
        cfg.recognizer.gallery if cfg is not None and cfg.recognizer is not None else None)
    if gallery_path is None:
        raise EdgecamError("no gallery to name the visitor into: give --gallery FILE (created when missing), or a "
                           "--config whose recognizer section names one")
    store = _open(args)
    try:
        if store.model_sha is None:
            raise EdgecamError(f"{store.path}: the store holds no visitors' model (empty?)")
        gallery = Gallery.load(gallery_path, store.model_sha, store.dim) if gallery_path.exists() \
            else Gallery(store.model_sha, int(store.dim))
        v = name_visitor(store, args.visitor, args.name, gallery, gallery_path)
    finally:
        store.close()
    print(f"{v.id} is now {args.name}: {v.embeddings} embedding{'s' if v.embeddings != 1 else ''} from {v.visits} "
          f"visit{'s' if v.visits != 1 else ''} added to {gallery_path}; the visitor is deleted")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Delete the visitors named (all or nothing), or every visitor with ``--all``."""
    if bool(args.visitors) == bool(args.all):
        raise EdgecamError("give visitor ids or --all (not both)")
    store = _open(args)
    try:
        if args.all:
            print(f"forgot {store.forget_all()} visitors")
            return 0
        for v in store.forget(args.visitors):
            print(f"forgot {v.id} ({v.visits} visit{'s' if v.visits != 1 else ''}, crop and embeddings deleted)")
    finally:
        store.close()
    return 0
