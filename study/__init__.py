"""pneumo-ray commands: thin CLIs over the `pneumo_ray` library (python -m study.<command> --help)."""
