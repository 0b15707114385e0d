"""forgetlab: measure, explain and reduce catastrophic forgetting in language models."""
__version__ = "0.1.0"

from .api import Results, load, run  # noqa: E402

__all__ = ["Results", "load", "run", "__version__"]
