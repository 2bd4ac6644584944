"""The stages of answering, in data-flow order: validate, featurize (with windows), batch, decode, aggregate.

Each stage is a pure function (or a class holding only its configuration and tokenizer) from its input
records to its output records: no file or network I/O, no model loading, no global state. That keeps every
stage testable on its own and lets `docqa predict` (`qa_core.engine`) and the Beam job (`pipelines/`) run
the same code.
"""
