"""Data preparation, torch-free: sources, canonicalization, vocabulary, sampling, the synthetic world."""

# the source formats `swag vocab build` and `swag sample` read (swagcli.prep.dumps), auto-detected by default
FORMATS = ("auto", "jsonl", "tsv", "yfcc", "img2dataset", "parquet")
