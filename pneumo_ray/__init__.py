"""pneumo-ray: pneumonia detection study engine (core library; Ray lives in `distributed`/`tuning`)."""

__version__ = "0.1.0"
