"""How an engine brings a two-table job's questions to its documents: the joins it has, in its own words.

Its own module (no imports of the input machinery) so that the light command-line declarations
(`qa_core.io.spec`) and the planned sources (`qa_core.io.pairs`) both use it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Joins:
    """How an engine brings a two-table job's questions to its documents, in its own words (`_run.json`).

    Attributes:
        held: Every answering process holds the questions whole (at most `input.max_questions` rows): a
            Beam side input, a Spark broadcast, `docqa predict`'s memory.
        keyed: The engine's keyed join (each question shuffled to its document's unit), taken when the
            questions' footers count more than `input.max_questions` rows; None: the engine has none, and
            such a job stops before any work.
    """

    held: str = "questions held in memory"
    keyed: str | None = None


HELD_IN_MEMORY = Joins()
"""`docqa predict`'s and the Python API's: the process streams the documents and holds the questions."""
