"""`mnist-dist demo RUN|REPO_ID`: the draw-a-digit page (outputs/demo.py) of a run's model or a Hub repo's, served
by Gradio on this machine (--share: also through a public Gradio link)."""

from __future__ import annotations

import argparse

from mnist_dist.errors import UserError
from mnist_dist.run import rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="RUN_OR_REPO_ID", help="a run folder, a model folder or a Hub repo id"
    )
    rundir.add_best_argument(parser)
    parser.add_argument(
        "--port", type=int, default=7860, help="the port to serve on (default 7860)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every interface)"
    )
    parser.add_argument(
        "--share", action="store_true", help="also serve it through a public gradio.live link"
    )


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1-65535, got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(
            "the demo needs Gradio, an optional extra: pip install 'mnist-dist[demo]'"
        ) from None
    from mnist_dist.outputs import demo, hub

    model_path = rundir.pick_model(hub.resolve(args.model), args.best)
    app = demo.build(model_path)
    print(
        f"mnist-dist demo: {model_path} on http://{args.host}:{args.port} (Ctrl-C stops it)",
        flush=True,
    )
    app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True)
    return 0
