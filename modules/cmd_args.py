"""Command-line flags. Names and meanings follow A1111 where a flag exists there; Serena's own are marked."""

from __future__ import annotations

import argparse
import sys


class SerenaArgumentParser(argparse.ArgumentParser):
    """argparse with an error that names the program and points at ``--help``."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"serena: error: {message}\nRun with --help to see every flag.\n")


def make_parser() -> argparse.ArgumentParser:
    parser = SerenaArgumentParser(
        prog="launch.py",
        description="Serena: a Stable Diffusion web UI runtime (A1111-compatible API, override-safe extensions).",
        allow_abbrev=False,
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument("--data-dir", default=None, metavar="DIR",
                       help="base folder for config.json, models/, extensions/ and outputs/ (default: Serena's folder)")
    paths.add_argument("--ui-settings-file", default=None, metavar="FILE",
                       help="settings file (default: <data-dir>/config.json)")
    paths.add_argument("--ckpt", default=None, metavar="FILE",
                       help="a checkpoint to register and load at start-up")
    paths.add_argument("--allow-pickle-checkpoints", action="store_true",
                       help="(Serena) load pickled .ckpt checkpoints; they can run arbitrary code, so only for files "
                            "you trust (weights-only unpickling is still enforced)")

    server = parser.add_argument_group("server")
    server.add_argument("--port", type=int, default=None,
                        help="port to listen on (default 7860, or 7861 with --nowebui)")
    server.add_argument("--listen", action="store_true",
                        help="listen on 0.0.0.0 so other machines can connect (default: 127.0.0.1 only)")
    server.add_argument("--api", action="store_true",
                        help="serve the /sdapi/v1 API beside the web UI (always on in Serena; kept for A1111 scripts)")
    server.add_argument("--nowebui", action="store_true", help="serve the API only, no web UI (default port 7861)")
    server.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER:PASS]",
                        help="protect the API with HTTP Basic credentials; a password may contain ':'")
    server.add_argument("--gradio-auth", default=None, metavar="USER:PASS[,USER:PASS]",
                        help="protect the web UI with a login; a password may contain ':' (use with --listen)")
    server.add_argument("--exit", action="store_true",
                        help="prepare the environment and initialise, then exit instead of serving")

    settings = parser.add_argument_group("settings")
    settings.add_argument("--freeze-settings", action="store_true",
                          help="refuse every change to settings (UI, API, per-generation overrides)")

    device = parser.add_argument_group("device")
    device.add_argument("--use-cpu", nargs="+", default=[], metavar="MODULE",
                        help="run these modules on the CPU: 'all' or 'sd'")

    ext = parser.add_argument_group("extensions")
    ext.add_argument("--disable-all-extensions", action="store_true",
                     help="load no extension, built-in or user")
    ext.add_argument("--disable-extra-extensions", action="store_true",
                     help="load only the built-in extensions")
    ext.add_argument("--strict-hooks", action="store_true",
                     help="(Serena) the first error raised by an extension hook fails the call, after full restoration")
    ext.add_argument("--list-hooks", action="store_true",
                     help="(Serena) print the resolved order of every hook's implementations and exit")

    gen = parser.add_argument_group("headless generation (Serena): generate, print where the images went, exit")
    gen.add_argument("--txt2img", default=None, metavar="PROMPT", help="generate images for PROMPT without a server")
    gen.add_argument("--negative-prompt", default="", metavar="TEXT")
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--seed", type=int, default=-1)
    gen.add_argument("--sampler", default="Euler a", metavar="NAME")
    gen.add_argument("--schedule-type", default="Automatic", metavar="NAME")
    gen.add_argument("--cfg-scale", type=float, default=None,
                     help="default: the checkpoint's recommended CFG scale, else 7")
    gen.add_argument("--width", type=int, default=None, help="default: the checkpoint's native size")
    gen.add_argument("--height", type=int, default=None, help="default: the checkpoint's native size")
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--n-iter", type=int, default=1)
    gen.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                     help="a per-generation setting override; repeat for several")
    gen.add_argument("--out", default=None, metavar="DIR", help="where to write the images (default: outputs/)")

    install = parser.add_argument_group("install")
    install.add_argument("--skip-install", action="store_true",
                         help="do not check or install the pinned requirements")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``). Unknown flags stop with a message naming them."""
    return make_parser().parse_args(argv)


def defaults() -> argparse.Namespace:
    return make_parser().parse_args([])
