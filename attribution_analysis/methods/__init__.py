"""methods layer of attribution_analysis."""
