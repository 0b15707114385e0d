"""forgetlab: measure, explain and reduce catastrophic forgetting in language models."""
from ._version import __version__  # noqa: E402

from .api import Results, load, run  # noqa: E402
from .inference import infer  # noqa: E402

__all__ = ["Results", "infer", "load", "run", "__version__"]
