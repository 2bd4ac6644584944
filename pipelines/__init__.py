"""Apache Beam adapters over `qa_core`: the `docqa run` job on any runner."""
