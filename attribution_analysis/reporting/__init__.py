"""reporting layer of attribution_analysis."""
