"""HTML reports and PNG figures of runs."""

from forgetlab.report.html import write_report

__all__ = ["write_report"]
