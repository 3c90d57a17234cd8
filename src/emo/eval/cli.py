"""Score generated videos against ground truth with the metrics of EMO's Table 1.

  emo evaluate --generated DIR --reference DIR [--out results.json] [weight flags]
  emo evaluate protocol jobs LIST GENERATED_DIR > jobs.json     a test list -> `emo generate --batch` jobs
  emo evaluate protocol reference LIST REFERENCE_DIR             a test list -> the --reference folder
  emo evaluate report A.json B.json [--names A B]                evaluations side by side

Pairs GENERATED/<stem>.mp4 with REFERENCE/<stem>.<mp4|mov|...> (and REFERENCE/<stem>.<png|jpg> as the
F-SIM reference portrait, if present). Writes JSON (--out) and a markdown table next to it (.md).
Learned metrics need their public weights; without them they are listed as unavailable with the flag:

  --inception pt_inception-2015-12-05-6726825d.pth   FID    (pytorch-fid)
  --i3d       i3d_torchscript.pt                     FVD    (StyleGAN-V)
  --syncnet   syncnet_v2.model                       LSE-C / LSE-D (syncnet_python)
  --arcface   backbone.pth                           F-SIM  (insightface arcface_torch iresnet100/50)
  --deep3d    epoch_20.pth                           E-FID  (Deep3DFaceRecon_pytorch)
  --lpips     alex.pth + --lpips-backbone alexnet-owt-7be5be79.pth   LPIPS (PerceptualSimilarity v0.1)

PSNR, SSIM, head-motion statistics and the landmark expression proxy need no weights.
See docs/evaluation.md for the protocol (the test list format is in emo/eval/protocol.py).
"""

from __future__ import annotations

HELP = "score generated videos against ground truth (FID, FVD, SyncNet, F-SIM, E-FID, PSNR/SSIM, motion)"


def add_arguments(parser) -> None:
    # Required to score; not marked required so that the actions below parse without them (checked in run).
    parser.add_argument("--generated", metavar="DIR", help="folder of generated mp4s (required to score)")
    parser.add_argument(
        "--reference", metavar="DIR", help="folder of ground-truth videos (+ images) (required to score)"
    )
    parser.add_argument(
        "--out",
        metavar="JSON",
        default=None,
        help="results file (default GENERATED/evaluation.json); the table goes to the same name .md",
    )
    parser.add_argument(
        "--inception", metavar="PATH", help="pytorch-fid pt_inception-2015-12-05-6726825d.pth (FID)"
    )
    parser.add_argument("--i3d", metavar="PATH", help="StyleGAN-V i3d_torchscript.pt (FVD)")
    parser.add_argument("--syncnet", metavar="PATH", help="syncnet_python syncnet_v2.model (LSE-C, LSE-D)")
    parser.add_argument("--arcface", metavar="PATH", help="insightface arcface_torch backbone.pth (F-SIM)")
    parser.add_argument("--deep3d", metavar="PATH", help="Deep3DFaceRecon_pytorch epoch_20.pth (E-FID)")
    parser.add_argument("--lpips", metavar="PATH", help="LPIPS v0.1 linear heads alex.pth or vgg.pth (LPIPS)")
    parser.add_argument(
        "--lpips-backbone",
        metavar="PATH",
        help="torchvision alexnet-owt-7be5be79.pth or vgg16-397923af.pth, matching --lpips",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="evaluate at most N frames of each video (default: all)",
    )
    parser.add_argument(
        "--frame-stride",
        type=int,
        default=1,
        metavar="N",
        help="FID, F-SIM, E-FID and LPIPS use every N-th frame (default 1: all; faster on CPU)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_actions(parser)


def _add_actions(parser) -> None:
    actions = parser.add_subparsers(title="other actions", metavar="ACTION")
    protocol = actions.add_parser(
        "protocol", help="HDTF-style test list -> generation jobs or reference folder"
    )
    protocol_steps = protocol.add_subparsers(metavar="STEP", required=True)
    jobs = protocol_steps.add_parser("jobs", help="print `emo generate --batch` jobs, fixed seeds (JSON)")
    jobs.add_argument("list", metavar="LIST", help="test list (JSON or CSV)")
    jobs.add_argument("folder", metavar="GENERATED_DIR", help="where the jobs write GENERATED_DIR/<id>.mp4")
    jobs.set_defaults(_run=run_protocol_jobs)
    reference = protocol_steps.add_parser(
        "reference", help="fill REFERENCE_DIR with links <id>.mp4, <id>.<ext>"
    )
    reference.add_argument("list", metavar="LIST", help="test list (JSON or CSV)")
    reference.add_argument(
        "folder", metavar="REFERENCE_DIR", help="the folder `emo evaluate --reference` reads"
    )
    reference.set_defaults(_run=run_protocol_reference)
    report = actions.add_parser(
        "report", help="print evaluations (the JSON emo evaluate writes) side by side"
    )
    report.add_argument("results", nargs="+", metavar="JSON", help="evaluation.json files")
    report.add_argument("--names", nargs="+", metavar="NAME", help="column names (default: the file paths)")
    report.set_defaults(_run=run_report)


def run_protocol_jobs(args) -> int:
    import json

    from emo.eval.protocol import generation_jobs, read_test_list

    print(json.dumps(generation_jobs(read_test_list(args.list), args.folder), indent=1))
    return 0


def run_protocol_reference(args) -> int:
    from emo.eval.protocol import link_reference, read_test_list

    link_reference(read_test_list(args.list), args.folder)
    return 0


def run_report(args) -> int:
    import sys

    from emo.errors import EmoError
    from emo.eval.report import compare_markdown, read_evaluation

    names = args.names or args.results
    if len(names) != len(args.results):
        raise EmoError(f"--names: {len(names)} names for {len(args.results)} results")
    sys.stdout.write(compare_markdown([read_evaluation(path) for path in args.results], names))
    return 0


def run(args) -> int:
    from pathlib import Path

    from emo.errors import EmoError
    from emo.eval.evaluate import EvalConfig, evaluate, find_pairs
    from emo.eval.report import to_markdown, write_report

    if not (args.generated and args.reference):
        raise EmoError("give --generated DIR and --reference DIR to score (or an action: protocol, report)")
    if args.max_frames is not None and args.max_frames < 2:
        raise EmoError(f"--max-frames {args.max_frames}: give at least 2")
    if args.frame_stride < 1:
        raise EmoError(f"--frame-stride {args.frame_stride}: give 1 or more")
    pairs = find_pairs(args.generated, args.reference)
    json_path = Path(args.out) if args.out else Path(args.generated) / "evaluation.json"
    md_path = json_path.with_suffix(".md")
    for path in (json_path, md_path):
        if path.exists() and not args.overwrite:
            raise EmoError(f"{path} exists; pass --overwrite to replace it or --out another name")
    weights = {
        k: getattr(args, k)
        for k in ("inception", "i3d", "syncnet", "arcface", "deep3d", "lpips", "lpips_backbone")
    }
    config = EvalConfig(
        **{k: Path(v) if v else None for k, v in weights.items()},
        max_frames=args.max_frames,
        frame_stride=args.frame_stride,
    )
    evaluation = evaluate(pairs, config, progress=not args.no_progress)
    inputs = {"generated": str(args.generated), "reference": str(args.reference), "weights": weights,
              "max_frames": args.max_frames, "frame_stride": args.frame_stride, "videos": [p.stem for p in pairs]}  # fmt: skip
    write_report(evaluation, json_path, md_path, inputs)
    print(to_markdown(evaluation), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0
