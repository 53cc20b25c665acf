"""Placement policies: node filters and scorers (binpack, spread, bestfit, fgd, topology)."""
