"""models layer of attribution_analysis."""
