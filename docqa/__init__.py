"""The `docqa` command line: one entry point over `qa_core` (in-process) and `pipelines` (Beam)."""
