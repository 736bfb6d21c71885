"""Metrics (UA, RA, TA, MIA-Efficacy, Avg. Gap), BN recalibration, path evaluation and t* selection."""
