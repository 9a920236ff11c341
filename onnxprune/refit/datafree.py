"""Channel statistics without data, from what the model stores.

Bias compensation needs each removed channel's mean at its consumer. With no
calibration data, a BatchNorm in eval mode states it: its output has mean B
and standard deviation |scale| on data like what it was trained on, and a
Relu after it turns that Gaussian into a rectified one with known moments
(as data-free quantization uses BN statistics). ``moment_statistics`` walks
back from each consumer's input through ops whose rule maps moments
(``Rule.moments``) to one that states them, and returns them as calibration
statistics, so the ordinary ``bias`` compensation runs on them.
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.groups import Groups
from onnxprune.calibration.statistics import Calibration, ChannelStats
from onnxprune.ops import rule_for

MAX_CHAIN = 8  # ops walked back from a consumer's input


def _moments(groups: Groups, tensor: str):
    view = groups.view
    chain, name = [], tensor
    for _ in range(MAX_CHAIN):
        node = view.producer.get(name)
        if node is None:
            return None
        rule = rule_for(node, view)
        stated = rule.moments(node, view, None)
        if stated is not None:
            for later in reversed(chain):
                stated = rule_for(later, view).moments(later, view, stated)
                if stated is None:
                    return None
            return stated
        chain.append(node)
        name = node.input[0] if node.input else ""
    return None


def moment_statistics(groups: Groups, requests) -> Calibration | None:
    """Calibration-like statistics for the requested (tensor, axis) pairs
    whose channel means the model states; None when it states none."""
    cal = Calibration()
    for tensor, axis in requests:
        rank = groups.view.rank(tensor)
        if rank is None or axis % rank != 1:
            continue
        found = _moments(groups, tensor)
        if found is None:
            continue
        mean, std = found
        st = ChannelStats(len(mean))
        st.count = 1
        st.sum = np.asarray(mean, dtype=np.float64)
        st.sumsq = st.sum ** 2 + np.asarray(std, dtype=np.float64) ** 2
        st.abssum = np.abs(st.sum)
        cal.stats[(tensor, axis)] = st
    if not cal.stats:
        return None
    cal.notes.append(f"data-free compensation: channel means of {len(cal.stats)} consumer inputs from "
                     f"BatchNorm statistics (calibration data would do better: --calib or --data)")
    return cal


__all__ = ["moment_statistics"]
