"""Explain neural news recommenders."""
