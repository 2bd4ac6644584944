"""`docqa_native.json`: the certificate that a checkpoint runs on docqa's own encoder as on transformers.

Written at export time by `qa_core.runtime.certify.certify_checkpoint` (after `docqa train`, or by
`scripts/certify_native.py` for an existing checkpoint), once docqa's encoder gave transformers' start and
end logits and tokenizer.json alone gave transformers' tokens and offsets on probe inputs. Read at load
time, where it is valid only while every file that decides tokens or logits is byte for byte the one
certified: the hashes of `CERTIFIED_FILES` it lists must be those of the files present now, and a file
of that list that appears or disappears voids it too. Nothing else about the checkpoint is re-derived at
load.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "docqa_native.json"
MANIFEST_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
# Every file transformers reads to build this checkpoint's tokenizer or model (the sharded-weights index
# too: its appearance makes another checkpoint).
CERTIFIED_FILES = (
    "config.json",
    WEIGHTS_FILE,
    f"{WEIGHTS_FILE}.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
)
_REQUIRED = ("config.json", WEIGHTS_FILE, "tokenizer.json")
_SPECIAL_IDS = ("cls", "sep", "pad")
# The config.json values docqa's encoder implements (the first is the default when a key is absent).
_PLAIN_BERT = {
    "model_type": ("bert",),
    "hidden_act": ("gelu",),
    "position_embedding_type": ("absolute",),
}


@dataclass(frozen=True)
class NativeManifest:
    """What a certification compared, found, and certified.

    Attributes:
        special_token_ids: transformers' CLS, SEP and PAD ids for this tokenizer (None where it has none).
        max_abs_logit_difference: Largest |native - transformers| start or end logit over the probes' real
            tokens.
        tolerance: The largest difference certified.
        compared: What was compared (probe count, dtype, device, the tokenizer's outputs).
        versions: transformers, tokenizers and torch versions that certified it.
        files: `CERTIFIED_FILES` present at certification, to their `sha256:` digest.
    """

    special_token_ids: dict[str, int | None]
    max_abs_logit_difference: float
    tolerance: float
    compared: dict[str, Any]
    versions: dict[str, str]
    files: dict[str, str]

    def to_json(self) -> str:
        """The manifest as written into the checkpoint."""
        document = {"format": MANIFEST_FORMAT, **self.__dict__}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def certified_files(directory: Path) -> dict[str, str]:
    """The `CERTIFIED_FILES` present in `directory`, to their content digest."""
    return {name: file_digest(directory / name) for name in CERTIFIED_FILES if (directory / name).is_file()}


def file_digest(path: Path) -> str:
    """`sha256:` hex digest of a file, computed once per (path, size, modification time) in a process."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def read_manifest(directory: Path) -> NativeManifest | str:
    """The checkpoint's valid manifest, or why there is none (missing, malformed, or voided by a file).

    Args:
        directory: A local checkpoint directory.
    """
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return f"it has no {MANIFEST_FILE} (not certified for docqa's encoder)"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        manifest = _parse(document)
    except (OSError, ValueError, TypeError, KeyError) as err:
        return f"its {MANIFEST_FILE} is unreadable ({type(err).__name__}: {err})"
    missing = [name for name in _REQUIRED if name not in manifest.files]
    if missing:
        return f"its {MANIFEST_FILE} certifies no {', '.join(missing)}"
    present = certified_files(directory)
    changed = sorted(set(present) ^ set(manifest.files)) + sorted(
        name for name in present.keys() & manifest.files.keys() if present[name] != manifest.files[name]
    )
    if changed:
        return f"{', '.join(changed)} changed since {MANIFEST_FILE} was written (it is void)"
    if not manifest.max_abs_logit_difference <= manifest.tolerance:
        return f"its {MANIFEST_FILE} records logits that differ beyond its tolerance"
    return plain_bert_refusal(directory) or manifest


def plain_bert_refusal(path: Path) -> str | None:
    """Why the checkpoint's files rule docqa's encoder out (None: a plain BERT QA checkpoint).

    Read before certifying and again with every manifest, so a manifest copied beside another kind of
    model certifies nothing.
    """
    if not (path / WEIGHTS_FILE).is_file() or (path / f"{WEIGHTS_FILE}.index.json").exists():
        return f"its weights are not one {WEIGHTS_FILE}"
    if not (path / "tokenizer.json").is_file():
        return "it has no tokenizer.json"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "it has no readable config.json"
    for key, allowed in _PLAIN_BERT.items():
        value = config.get(key, allowed[0] if key != "model_type" else None)
        if value not in allowed:
            return f"its config.json {key} is {value!r}, not {allowed[0]!r}"
    if config.get("architectures") not in (None, ["BertForQuestionAnswering"]):
        return f"its config.json architectures is {config.get('architectures')}"
    if "auto_map" in config or "quantization_config" in config or config.get("is_decoder"):
        return "its config.json asks for custom code, quantization or a decoder"
    return None


def _parse(document: Any) -> NativeManifest:
    """A `NativeManifest` from the file's JSON (ValueError, TypeError or KeyError when malformed)."""
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"format is not {MANIFEST_FORMAT}")
    ids = document["special_token_ids"]
    special = {key: None if ids[key] is None else int(ids[key]) for key in _SPECIAL_IDS}
    files = {str(name): str(digest) for name, digest in dict(document["files"]).items()}
    return NativeManifest(
        special_token_ids=special,
        max_abs_logit_difference=float(document["max_abs_logit_difference"]),
        tolerance=float(document["tolerance"]),
        compared=dict(document["compared"]),
        versions={str(k): str(v) for k, v in dict(document["versions"]).items()},
        files=files,
    )
