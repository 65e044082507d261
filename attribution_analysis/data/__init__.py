"""data layer of attribution_analysis."""
