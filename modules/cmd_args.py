"""Command-line flags. Names and meanings follow A1111 where a flag exists there; Serena's own are marked."""

from __future__ import annotations

import argparse
import sys


class SerenaArgumentParser(argparse.ArgumentParser):
    """argparse with an error that names the program and points at ``--help``."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"serena: error: {message}\nRun with --help to see every flag.\n")


#: A1111 flags that client READMEs and start scripts pass, which mean nothing in Serena: flag -> (why, argparse
#: keywords). Each is accepted and announced at start (``notices``), never silently ignored.
NO_EFFECT: dict[str, tuple[str, dict]] = {
    "--xformers": ("Serena uses PyTorch's scaled-dot-product attention", {"action": "store_true"}),
    "--upcast-sampling": ("Serena always does the sampler's arithmetic in float32; only the networks run in half "
                          "precision", {"action": "store_true"}),
    "--skip-torch-cuda-test": ("Serena never requires CUDA; it uses the CPU without one", {"action": "store_true"}),
    "--enable-insecure-extension-access": ("Serena has no extension installer in the UI", {"action": "store_true"}),
    "--theme": ("the UI follows the browser's colour scheme; add ?__theme=dark or ?__theme=light to its address",
                {"choices": ["light", "dark"], "default": None}),
    "--autolaunch": ("Serena does not open a browser; open the address it prints", {"action": "store_true"}),
}


def notices(cmd_opts: argparse.Namespace) -> list[str]:
    """One line for every given flag of ``NO_EFFECT``, saying why it does nothing here."""
    lines = []
    for flag, (why, _) in NO_EFFECT.items():
        if getattr(cmd_opts, flag[2:].replace("-", "_"), None) not in (None, False):
            lines.append(f"serena: notice: {flag} has no effect: {why}")
    return lines


# --txt2img's Hires fix flags (with --enable-hr): each sets the processing field of its name (--hr-scale: hr_scale);
# not given, the field keeps its default.
HIRES_FLAGS = (("--hr-scale", float, "X"), ("--hr-upscaler", str, "NAME"), ("--hr-second-pass-steps", int, "N"),
               ("--hr-resize-x", int, "PX"), ("--hr-resize-y", int, "PX"), ("--denoising-strength", float, "X"),
               ("--hr-checkpoint-name", str, "NAME"), ("--hr-sampler-name", str, "NAME"),
               ("--hr-scheduler", str, "NAME"), ("--hr-prompt", str, "TEXT"), ("--hr-negative-prompt", str, "TEXT"))


def _device_id(value: str) -> str:
    """A CUDA device index, kept as the string A1111's ``cmd-flags`` shows."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a CUDA device number (0, 1, ...), got {value!r}")
    return value


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
    paths.add_argument("--styles-file", action="append", default=[], metavar="FILE",
                       help="a styles file, or a wildcard such as 'styles/*.csv'; repeat for several (A1111; "
                            "default: styles.csv in the data folder)")
    paths.add_argument("--embeddings-dir", default=None, metavar="DIR",
                       help="textual inversion embeddings, subfolders included (default: <data-dir>/embeddings)")
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
    server.add_argument("--cors-allow-origins", default=None, metavar="ORIGIN[,ORIGIN]",
                        help="answer cross-origin requests (CORS, preflight included) from these origins, e.g. "
                             "http://localhost:3000; off by default")
    server.add_argument("--cors-allow-origins-regex", default=None, metavar="REGEX",
                        help="answer cross-origin requests from origins matching this regular expression")
    server.add_argument("--api-log", action="store_true",
                        help="log every /sdapi request: method, path, status and time taken")
    server.add_argument("--share", action="store_true",
                        help="refused: Serena never opens a public tunnel (use --listen behind your own proxy)")
    server.add_argument("--workers", type=int, default=None, metavar="N",
                        help="(Serena) serve the same API and UI backed by N generation workers: Ray Serve replicas "
                             "on this machine (docs/operations.md, 'Scaling out'); installs ray on first use")
    server.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="(Serena) join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one; "
                             "one worker per GPU unless --workers says how many")
    server.add_argument("--exit", action="store_true",
                        help="prepare the environment and initialise, then exit instead of serving")

    settings = parser.add_argument_group("settings")
    settings.add_argument("--freeze-settings", action="store_true",
                          help="refuse every change to settings (UI, API, per-generation overrides)")

    device = parser.add_argument_group("device")
    device.add_argument("--use-cpu", nargs="+", default=[], metavar="MODULE",
                        help="run these modules on the CPU: 'all' or 'sd'")
    device.add_argument("--device-id", type=_device_id, default=None, metavar="ID",
                        help="the CUDA device to use (default 0)")
    device.add_argument("--no-half", action="store_true", help="run the networks in float32 on a GPU too")
    device.add_argument("--no-half-vae", action="store_true", help="run the VAE in float32 on a GPU too")
    device.add_argument("--precision", choices=["full", "half", "autocast"], default=None,
                        help="'full' is --no-half; 'half' and 'autocast' (A1111's default) run the networks in "
                             "float16 on a GPU; the CPU always runs float32")
    device.add_argument("--medvram", action="store_true",
                        help="keep only the network that runs on the GPU, the others in CPU memory")
    device.add_argument("--lowvram", action="store_true",
                        help="move the weights to the GPU layer by layer as they run (slowest, least memory)")
    device.add_argument("--opt-sdp-attention", action="store_true",
                        help="PyTorch's scaled-dot-product attention (the default)")
    device.add_argument("--opt-sdp-no-mem-attention", action="store_true",
                        help="scaled-dot-product attention without the memory-efficient kernel (deterministic)")

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
    gen.add_argument("--styles", action="append", default=[], metavar="NAME",
                     help="a prompt style of the styles file; repeat for several, applied in order")
    gen.add_argument("--tiling", action="store_true", help="a seamless tileable image (circular padding)")
    gen.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                     help="a per-generation setting override; repeat for several")
    gen.add_argument("--out", default=None, metavar="DIR", help="where to write the images (default: outputs/)")
    hr = parser.add_argument_group("headless Hires fix (Serena): the API's fields of the same names (docs/api.md)")
    hr.add_argument("--enable-hr", action="store_true", help="run Hires fix's second pass")
    for flag, kind, metavar in HIRES_FLAGS:
        hr.add_argument(flag, type=kind, default=None, metavar=metavar)

    compat = parser.add_argument_group(
        "A1111 compatibility: accepted so existing start scripts run; each prints why it does nothing here")
    for flag, (_, kwargs) in NO_EFFECT.items():
        compat.add_argument(flag, **kwargs, help=f"no effect: {NO_EFFECT[flag][0]}")

    install = parser.add_argument_group("install")
    install.add_argument("--skip-install", action="store_true",
                         help="do not check or install the pinned requirements")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``). Unknown flags, and ``--share``, stop with a message naming them."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.share:
        parser.error("--share is not supported: Serena never opens a public tunnel. Serve on your network with "
                     "--listen (and --api-auth/--gradio-auth), or put it behind your own reverse proxy")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def scales_out(args) -> bool:
    """Whether ``args`` ask for Ray Serve workers (``--workers``, ``--ray-address``)."""
    return bool(args.workers or args.ray_address)


def defaults() -> argparse.Namespace:
    return make_parser().parse_args([])
