"""Data lifecycle: ingest (mirror or hub), validate (Great Expectations), prepare tasks and the corpus."""
