"""The versions of the libraries that answer a job, as `docqa --version` and `_run.json` report them.

Read from the installed distributions' metadata, so nothing is imported (Beam and pyspark stay out of
`qa_core`, and `docqa --version` stays instant); torch's includes its build (`2.13.0+cpu`, `+cu128`).
A library that is not installed reports None.
"""

from __future__ import annotations

from importlib import metadata

try:
    DOCQA_VERSION = metadata.version("docqa-beam")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    DOCQA_VERSION = "0.0.0+source"

# The libraries whose releases change what docqa computes or how it runs (see requirements-lock.txt).
ANSWERING_PACKAGES = ("torch", "transformers", "tokenizers", "apache-beam", "pyarrow", "pyspark")


def package_versions() -> dict[str, str | None]:
    """`{distribution name: installed version or None}` of `ANSWERING_PACKAGES`, in that order."""
    found: dict[str, str | None] = {}
    for name in ANSWERING_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def version_report(docqa_version: str, python_version: str) -> str:
    """The text of `docqa --version`: docqa and Python on one line, the libraries on the next."""
    libraries = ", ".join(
        f"{name} {version}" if version else f"{name} (not installed)"
        for name, version in package_versions().items()
    )
    return f"docqa {docqa_version} (Python {python_version})\n{libraries}"
