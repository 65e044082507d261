"""utils layer of attribution_analysis."""
