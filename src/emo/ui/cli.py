"""A web page for generation: upload a portrait and audio, see the face region, generate, download.

examples:
  emo ui                                   # the shipped small model; then open http://127.0.0.1:7860
  emo ui --weights ckpt/                   # a model you trained
  emo ui --preset tiny --port 8000         # a smoke run: the random tiny model's videos are noise

The model loads once, at start. One generation runs at a time; other jobs wait in a queue that shows their
place. The page listens on 127.0.0.1 only: pass --host 0.0.0.0 to serve your network, --share for a public
link through Gradio's relay (off unless asked). Needs the ui extra: pip install -e ".[ui]".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

from emo.errors import EmoError

HELP = "web page: portrait + audio -> video, in the browser"


def add_arguments(parser) -> None:
    from emo.generation.cli import add_model_arguments

    add_model_arguments(parser)
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    server.add_argument("--port", type=int, help="port (default: 7860, or the next free one)")
    server.add_argument("--share", action="store_true", help="also open a public link through Gradio's relay")


def run(args) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        raise EmoError(f"--port must be in 1-65535, got {args.port}")
    if importlib.util.find_spec("gradio") is None:
        raise EmoError('emo ui needs Gradio: pip install -e ".[ui]" (or run scripts/setup.sh)')
    from emo.generation.cli import load_pipeline

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's requests to itself, one line each
    pipe = load_pipeline(args)
    with tempfile.TemporaryDirectory(prefix="emo-ui-") as workdir:
        # Uploads, Gradio's copies of the videos and the jobs' folders all live here, removed at exit
        # (set before gradio is imported: some of its modules read it at import).
        os.environ["GRADIO_TEMP_DIR"] = str(Path(workdir) / "gradio")
        from emo.ui.app import build_app
        from emo.ui.jobs import GenerationService

        notice = (
            "**--preset tiny**: a random tiny model for smoke runs; its videos show noise, not a face. "
            "Start `emo ui` (the shipped model) or `emo ui --weights DIR` for real results."
            if args.preset
            else None
        )
        demo = build_app(GenerationService(pipe, workdir), notice)
        _, local_url, share_url = demo.queue(max_size=64).launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            inbrowser=False,
            ssr_mode=False,  # no Node server next to ours
            mcp_server=False,
            pwa=False,
            quiet=True,  # Gradio's own banner suggests launch(share=True); ours names the flags
            prevent_thread_lock=True,
        )
        print(
            f"emo ui: serving on {local_url}" + (f" and {share_url}" if share_url else "") + " (Ctrl-C stops)"
        )
        demo.block_thread()
    return 0
