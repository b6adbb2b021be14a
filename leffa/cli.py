"""Command line: ``python -m leffa <command>``. Each command has ``--help``; exit code 0 on success,
1 on a runtime error (message on stderr), 2 on bad arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _convert(args: argparse.Namespace) -> int:
    import torch

    from leffa.model import LeffaModel, detect_base
    from leffa.serialization import check_state_dict, read_state_dict, save_state_dict

    state = read_state_dict(args.input)
    base = detect_base(state) if args.base == "auto" else args.base
    expected = {name: t.shape for name, t in LeffaModel.from_base(base, device="meta").state_dict().items()}
    check_state_dict(expected, state, hint=f"model base: {base}")
    out = save_state_dict(state, args.output, dtype=torch.float16 if args.fp16 else None)
    print(f"wrote {out} ({base}, {len(state)} tensors{', fp16' if args.fp16 else ''})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m leffa", description="Leffa virtual try-on and pose transfer")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="check a released .pth and write a .safetensors copy (optionally fp16)",
        description="Check a checkpoint against its base model strictly and write a copy for faster loads.",
    )
    convert.add_argument("input", help="released .pth (or .safetensors) checkpoint")
    convert.add_argument("output", help="output path ending in .safetensors (or .pth)")
    convert.add_argument("--fp16", action="store_true", help="store floating point tensors as float16")
    convert.add_argument(
        "--base", default="auto", choices=["auto", "sd15-inpainting", "sdxl-inpainting", "tiny"],
        help="model base (default: detected from the keys)",
    )
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
