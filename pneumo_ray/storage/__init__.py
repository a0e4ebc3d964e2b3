"""Storage of study outputs: atomic writes, keyed Parquet tables, run.json. May import: config."""
