"""Leffa demo entry point (``python app.py``).

For now this loads a model and reports what it loaded; the Gradio interface arrives with the app issue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from leffa.model import LeffaModel


def main() -> int:
    parser = argparse.ArgumentParser(description="Leffa virtual try-on and pose transfer demo")
    parser.add_argument("--ckpt-dir", default="ckpts", help="folder with the released weights")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny model")
    args = parser.parse_args()
    weights = Path(args.ckpt_dir) / "virtual_tryon.pth"
    if args.tiny or not weights.is_file():
        if not args.tiny:
            print(f"{weights} not found; using the built-in tiny model (random weights).")
        model = LeffaModel.from_base("tiny", device=args.device, dtype=args.dtype)
    else:
        model = LeffaModel.from_pretrained(weights, device=args.device, dtype=args.dtype)
    count = sum(p.numel() for p in model.parameters())
    print(f"loaded Leffa model '{model.base}' ({count / 1e6:.1f} M parameters) on {model.device}, {model.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
