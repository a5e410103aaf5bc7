"""Synthetic COVID-CTset: phantom chest CT series written in the dataset's exact layout.

``render_series`` paints one series (pixels plus lung and lesion truth);
``plan_cohort`` decides patients, groups and slice counts; ``write_cohort``
writes the whole tree, CSVs, metadata and truth store. ``write_hybrid_cohort``
writes the same layout from real chest CTs with inserted lesions.
"""
from __future__ import annotations

from .cohort import CohortPlan, plan_cohort
from .hybrid_cohort import write_hybrid_cohort
from .phantom import Phantom, render_series
from .write import SynthSummary, flat_name, write_cohort

__all__ = ["CohortPlan", "Phantom", "SynthSummary", "flat_name", "plan_cohort", "render_series", "write_cohort",
           "write_hybrid_cohort"]
