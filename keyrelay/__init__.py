"""keyrelay: a self-hostable LLM API gateway with per-key governance."""

__version__ = "0.1.0"
