"""evaluation layer of attribution_analysis."""
