"""The names of the paper's metrics, in one place (pure Python: reports read it without torch).

Avg. Gap = (|UA − UA_r| + |RA − RA_r| + |TA − TA_r| + |MIA − MIA_r|) / 4   (against θ_r)
"""

GAP_METRICS = ("UA", "RA", "TA", "MIA")  # the four Avg. Gap averages over, in the paper's column order
PATH_METRICS = ("t", *GAP_METRICS, "gap_cal", "avg_gap")  # one row per t of a path, logged per step
TRIAL_METRICS = (*GAP_METRICS, "avg_gap", "gap_cal", "t_star")  # θ(t*) of a trial, reported to Tune
# a sweep's trials table: the trial, its baseline as produced, the baseline+BN and baseline+line controls
SUMMARY_METRICS = (
    *TRIAL_METRICS,
    "region_size",
    "path_gain",
    "selection_regret",
    "baseline_avg_gap",
    "baseline_bn_avg_gap",
    "line_avg_gap",
    "rte_min",
)
