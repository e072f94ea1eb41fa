"""Outcome types of the deployment-surgery commands (``surgeon fold``, ``surgeon convert``).

Their JSON document is the edit document (``surgeon.edit/1``, see
:class:`surgeon.outcomes.EditOutcome`) with each command's own ``details``; one type per
command so the render dispatch needs nothing but the type. Kept apart from
:mod:`surgeon.outcomes` so the surgery commands grow without crowding it.
"""

from __future__ import annotations

from surgeon.outcomes import EditOutcome


class FoldOutcome(EditOutcome):
    """What ``surgeon fold`` did."""


class ConvertOutcome(EditOutcome):
    """What ``surgeon convert`` did."""
