"""What the trainer needs from prepared data, whichever way it was prepared (in memory or streamed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from dacdr.data.samples import PreparedData
    from dacdr.data.streaming import StreamingData

TrainingData: TypeAlias = "PreparedData | StreamingData"
