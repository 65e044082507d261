"""Compatibility path: the workspace lives in :mod:`attribution_analysis.app.workspace`; code
written against ``attribution_analysis.pipeline`` keeps working through these re-exports."""

from attribution_analysis.app.workspace import Workspace, open_workspace, split_examples

__all__ = ["Workspace", "open_workspace", "split_examples"]
