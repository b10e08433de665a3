"""The figures of predictions on photos and videos (Agg backend): arrays in, matplotlib figures out."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fer import CLASS_NAMES  # noqa: E402


def emotion_timeline(times: np.ndarray, probabilities: np.ndarray, title: str) -> Figure:
    """Each class's probability (T, 7) against time in seconds; gaps where no face was found (NaN)."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    colours = plt.get_cmap("tab10")
    for c, name in enumerate(CLASS_NAMES):
        ax.plot(times, probabilities[:, c], label=name, color=colours(c), marker="." if len(times) < 40 else None)
    ax.set(xlabel="time (s)", ylabel="probability (largest face)", ylim=(0, 1), title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
