"""Writes samples/questions.parquet, the bundled demo input (text written for docqa, no external data)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PARAGRAPHS = {
    "lighthouse": (
        "The Harwick lighthouse stands on a granite point at the mouth of the Ess estuary. It was built in "
        "1872 by the engineer Margaret Doyle, who designed its double-walled tower to survive winter storms. "
        "The light was automated in 1989, and the keeper's cottage now houses a small museum about coastal "
        "shipping. On clear nights the beam can be seen from 22 nautical miles away."
    ),
    "bread": (
        "Sourdough bread rises because of a culture of wild yeast and lactic acid bacteria. Bakers keep the "
        "culture, called a starter, alive by feeding it flour and water every day. The bacteria produce "
        "lactic and acetic acids, which give the bread its sour taste, while the yeast produces the carbon "
        "dioxide that makes the dough rise. A typical loaf needs between eight and twelve hours of "
        "fermentation."
    ),
    "railway": (
        "The Northern Valley Railway opened in 1911 and connected the mining town of Carrow to the port of "
        "Linmouth, a distance of 64 kilometres. Its steam locomotives were replaced by diesel engines in "
        "1958. Passenger service ended in 1973, but volunteers reopened an 11-kilometre section as a "
        "heritage line in 1996. The line's most famous structure is the Bellspan viaduct, which has "
        "nineteen arches."
    ),
    "tokyo": (
        "東京は日本の首都です。 Tokyo became the capital in 1868, when the emperor moved from Kyoto. "
        "The metropolis has about 14 million residents, and the Greater Tokyo Area is the most populous "
        "metropolitan area in the world."
    ),
}

QUESTIONS = [
    ("lighthouse", "When was the Harwick lighthouse built?"),
    ("lighthouse", "Who designed the lighthouse?"),
    ("lighthouse", "What does the keeper's cottage house now?"),
    ("lighthouse", "How far away can the beam be seen?"),
    ("lighthouse", "When was the light automated?"),
    ("bread", "What makes sourdough bread rise?"),
    ("bread", "What is the culture called?"),
    ("bread", "Which acids do the bacteria produce?"),
    ("bread", "How long does a typical loaf ferment?"),
    ("railway", "When did the Northern Valley Railway open?"),
    ("railway", "Which town did the railway connect to the port?"),
    ("railway", "When were the steam locomotives replaced?"),
    ("railway", "How many arches does the Bellspan viaduct have?"),
    ("railway", "When did passenger service end?"),
    ("tokyo", "When did Tokyo become the capital?"),
    ("tokyo", "Where did the emperor move from?"),
    ("tokyo", "How many residents does the metropolis have?"),
    ("railway", ""),
]


def main() -> None:
    """Writes the sample table next to this script."""
    rows = [
        {"id": f"sample-{i:02d}", "title": title, "question": q, "context": PARAGRAPHS[title]}
        for i, (title, q) in enumerate(QUESTIONS)
    ]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, Path(__file__).with_name("questions.parquet"))


if __name__ == "__main__":
    main()
