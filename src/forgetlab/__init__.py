"""forgetlab: measure, explain and reduce catastrophic forgetting in language models."""
from ._version import __version__  # noqa: E402

from .api import Results, load, run  # noqa: E402
from .inference import infer  # noqa: E402


def load_store(path):
    """A store's runs as a pandas DataFrame, a row per run (forgetlab.report.table lists the columns)."""
    from .report.table import load_store

    return load_store(path)


__all__ = ["Results", "infer", "load", "load_store", "run", "__version__"]
