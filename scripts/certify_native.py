"""Certifies an existing checkpoint for docqa's own encoder (writes its `docqa_native.json`).

Compares docqa's encoder and tokenizer.json with transformers' on probe inputs
(`qa_core.runtime.certify.certify_checkpoint`); a checkpoint that passes loads without transformers.

    python scripts/certify_native.py qa_core/models/docqa-minilm-l6-squad [--dtype fp32]
"""

from __future__ import annotations

import argparse
import logging
import sys

from qa_core.runtime.certify import TOLERANCES, certify_checkpoint


def main(argv: list[str] | None = None) -> int:
    """Certifies each checkpoint named; exit status 1 when any is refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="local checkpoint directories")
    parser.add_argument(
        "--dtype", choices=sorted(TOLERANCES), default="fp32", help="dtype both models compute in"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    refused = 0
    for checkpoint in args.checkpoints:
        refusal = certify_checkpoint(checkpoint, dtype=args.dtype)
        if refusal is not None:
            logging.error("%s is not certified: %s", checkpoint, refusal)
            refused += 1
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
