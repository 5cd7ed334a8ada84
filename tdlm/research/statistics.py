"""Standard errors for comparing two models on the same held-out blocks.

Blocks of one source document are correlated (a file of codec tables is easy for both models, a file of
docstrings hard for both), so the per-block differences are not independent: the standard error of their mean is
clustered by document (the sandwich estimator with the G / (G - 1) small-sample factor). A Monte-Carlo estimate
(the diffusion NELBO) adds its own variance, independent of which blocks were drawn, so the two add.
"""

import math

import numpy as np


def clustered_standard_error(values, clusters) -> float:
    """SE of mean(values) when observations within a cluster are correlated and clusters are independent."""
    values, clusters = np.asarray(values, dtype=np.float64), np.asarray(clusters)
    n = values.size
    labels, inverse = np.unique(clusters, return_inverse=True)
    groups = labels.size
    if groups < 2:
        return math.nan
    sums = np.bincount(inverse, weights=values - values.mean(), minlength=groups)
    return float(math.sqrt(groups / (groups - 1) * np.sum(sums ** 2)) / n)


def paired_difference(loss_a, loss_b, clusters, mc_variance_a=None, mc_variance_b=None) -> dict:
    """mean(a - b) over blocks and its standard error: clustered by document, plus the Monte-Carlo variance of each
    block's estimate where one is given (the per-block variance of its mean over draws)."""
    a, b = np.asarray(loss_a, dtype=np.float64), np.asarray(loss_b, dtype=np.float64)
    difference = a - b
    n = difference.size
    cluster_se = clustered_standard_error(difference, clusters)
    mc_variance = sum(float(np.sum(v)) for v in (mc_variance_a, mc_variance_b) if v is not None) / n ** 2
    return {"difference": float(difference.mean()), "standard_error": math.sqrt(cluster_se ** 2 + mc_variance),
            "cluster_standard_error": cluster_se, "monte_carlo_standard_error": math.sqrt(mc_variance),
            "num_blocks": n, "num_clusters": int(np.unique(np.asarray(clusters)).size)}
