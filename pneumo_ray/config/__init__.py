"""Configuration: frozen dataclasses and tables passed as they are. May import: nothing of pneumo_ray
outside config/ (standard library only), so every layer and the command line can read them."""
