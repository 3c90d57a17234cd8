"""Maintainer tools: rebuild the data files shipped in ``emo/assets``. Not listed in ``emo --help``.

  emo dev canonical-face OUT.npz VIDEO [VIDEO...]

``canonical-face`` derives the canonical 3D face that head poses are measured against
(``emo/assets/canonical_face.npz``) from Face Mesh output on talking-head videos; the method is in
:mod:`emo.conditioning.face.canonical` (it was built from the talking-head fixtures of tests/data).
"""

from __future__ import annotations

HELP = "maintainer tools (rebuild emo/assets/canonical_face.npz)"


def add_arguments(parser) -> None:
    tools = parser.add_subparsers(title="tools", metavar="TOOL", required=True)
    canonical = tools.add_parser(
        "canonical-face", help="rebuild the canonical 3D face from talking-head videos"
    )
    canonical.add_argument("out", metavar="OUT.npz", help="where to write it (emo/assets/canonical_face.npz)")
    canonical.add_argument("videos", nargs="+", metavar="VIDEO", help="talking-head videos, one face each")
    canonical.set_defaults(_run=canonical_face)


def canonical_face(args) -> int:
    import numpy as np

    from emo.conditioning.face.canonical import build_canonical_face, face_meshes
    from emo.media import atomic_path

    meshes = face_meshes(args.videos)
    data = build_canonical_face(meshes)
    with atomic_path(args.out) as temp:
        np.savez(temp, **data)
    print(f"{args.out}: canonical face from {len(meshes)} meshes, {len(data['rigid'])} rigid points")
    return 0


def run(args) -> int:  # never reached: each tool sets its own _run
    raise AssertionError("dev needs a tool")
