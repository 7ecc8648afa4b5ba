"""A requirement as users state it (a flag and a value), turned into the search's
`Requirement` in one place: the planner CLI, the device's live planner and the benches
all go through `RequirementSpec`."""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from planner.latency import Cost, LatencyModel


class RequirementKind(enum.Enum):
    LATENCY_RATIO = "latency-ratio"          # latency <= R x best single-end latency
    MAX_LATENCY_S = "max-latency-s"          # latency <= S seconds
    MAX_ACCURACY_LOSS = "max-accuracy-loss"  # loss <= A


@dataclass(frozen=True)
class RequirementSpec:
    kind: RequirementKind
    value: float

    @classmethod
    def from_flags(cls, latency_ratio: float | None = None, latency_s: float | None = None,
                   accuracy_loss: float | None = None, default_accuracy_loss: float | None = None
                   ) -> "RequirementSpec":
        """Exactly one of the three flags (or, with none given, `default_accuracy_loss`)."""
        given = [(k, v) for k, v in ((RequirementKind.LATENCY_RATIO, latency_ratio),
                                     (RequirementKind.MAX_LATENCY_S, latency_s),
                                     (RequirementKind.MAX_ACCURACY_LOSS, accuracy_loss)) if v is not None]
        if not given and default_accuracy_loss is not None:
            given = [(RequirementKind.MAX_ACCURACY_LOSS, default_accuracy_loss)]
        if len(given) != 1:
            raise ValueError(f"expected exactly one requirement (latency ratio, latency seconds or accuracy "
                             f"loss), got {len(given)}")
        return cls(*given[0])

    def build(self, lat: LatencyModel):
        """The search's Requirement at the latency model's bandwidth (a ratio needs its single ends).

        The seconds bounded are the model's cost: under Cost.THROUGHPUT a latency bound is a
        bound on the stream's frame period (seconds between answers), its ratio one to the
        faster single end's period."""
        from planner.search import Requirement
        req = {RequirementKind.LATENCY_RATIO: lambda: Requirement.latency_ratio(self.value,
                                                                                lat.best_single_end_cost()[1]),
               RequirementKind.MAX_LATENCY_S: lambda: Requirement.latency_s(self.value),
               RequirementKind.MAX_ACCURACY_LOSS: lambda: Requirement.accuracy_loss(self.value)}[self.kind]()
        if lat.cost is Cost.THROUGHPUT and self.kind is not RequirementKind.MAX_ACCURACY_LOSS:
            req = replace(req, text=req.text.replace("latency", f"frame period at depth {lat.depth}", 1))
        return req
