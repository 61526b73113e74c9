"""The memory books: what admitted models hold per device, what the rest of the machine
uses, and whether one more model fits.

On each device, at the moment of a decision:

    children = what llmd's running children hold that the device counts as used
    others   = total - free - children          (everything else on the machine)
    booked   = the sum of every admitted model's booking
    room     = total - others - booked - margin  (= free + children - booked - margin)

A model's booking is the larger of its estimate plus the growth booked for it (the
prompt cache its child may fill) and its measured use. A load fits where its need plus
its growth is at most the room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from llmd.errors import NoRoom, TooBig
from llmd.memory.devices import Device


@dataclass(frozen=True)
class Holding:
    """One model's figures per device, in MiB."""

    estimate: Mapping[str, int] = field(default_factory=dict)
    growth: Mapping[str, int] = field(default_factory=dict)  # booked, not yet used
    measured: Mapping[str, int] = field(default_factory=dict)

    def booked(self) -> dict[str, int]:
        """What the books hold for it: max(estimate + growth, measured), per device."""
        devices = {*self.estimate, *self.growth, *self.measured}
        return {d: max(self.estimate.get(d, 0) + self.growth.get(d, 0),
                       self.measured.get(d, 0)) for d in devices}

    def need(self) -> dict[str, int]:
        """What it needs before it runs: estimate plus growth, per device."""
        return {d: self.estimate.get(d, 0) + self.growth.get(d, 0)
                for d in {*self.estimate, *self.growth}}


@dataclass(frozen=True)
class Ledger:
    """One device's books at one moment, in MiB."""

    device: Device
    children: int = 0  # what llmd's children hold that the device counts as used
    estimate: int = 0
    measured: int = 0
    growth: int = 0
    booked: int = 0
    pending: int = 0  # booked for admitted children not measurable yet (still starting)

    @property
    def others(self) -> int:
        """What everything but llmd's children uses now."""
        return max(0, self.device.total - self.device.free - self.children)

    @property
    def room(self) -> int:
        """What one more model may take here (negative: the margin is already crossed)."""
        return self.device.total - self.others - self.booked - self.device.margin

    def to_json(self) -> dict[str, object]:
        """The device as `llmctl status` and /metrics report it."""
        d = self.device
        return {"id": d.id, "name": d.name, "total_mib": d.total, "free_mib": d.free,
                "others_mib": self.others, "children_mib": self.children,
                "estimate_mib": self.estimate, "measured_mib": self.measured,
                "growth_mib": self.growth, "booked_mib": self.booked,
                "committed_mib": self.booked, "margin_mib": d.margin,
                "room_mib": max(0, self.room)}


def ledgers(devices: Iterable[Device], holdings: Iterable[Holding],
            add_back: Iterable[Mapping[str, int] | None]) -> list[Ledger]:
    """The books of every device, from each admitted model's holding and, in the same
    order, its child's add-back (None for a child that can't be measured yet)."""
    sums: dict[str, dict[str, int]] = {}
    for holding, back in zip(holdings, add_back):
        booked = holding.booked()
        for device, mib in booked.items():
            row = sums.setdefault(device, {})
            row["estimate"] = row.get("estimate", 0) + holding.estimate.get(device, 0)
            row["measured"] = row.get("measured", 0) + holding.measured.get(device, 0)
            row["growth"] = row.get("growth", 0) + holding.growth.get(device, 0)
            row["booked"] = row.get("booked", 0) + mib
            if back is None:
                row["pending"] = row.get("pending", 0) + mib
        for device, mib in (back or {}).items():
            row = sums.setdefault(device, {})
            row["children"] = row.get("children", 0) + mib
    return [Ledger(d, **sums.get(d.id, {})) for d in devices]


def check_fits_alone(name: str, need: Mapping[str, int], books: list[Ledger]) -> None:
    """Raise TooBig when the model can't fit even on an otherwise empty machine, and NoRoom
    when other programs leave too little even with every llmd model unloaded."""
    by_id = {b.device.id: b for b in books}
    for device_id, mib in need.items():
        if not mib:
            continue
        b = by_id.get(device_id)
        if b is None:
            raise TooBig(f"model '{name}' needs {mib} MiB on {device_id}, "
                         "which this machine does not have")
        d = b.device
        if mib > d.budget:
            raise TooBig(
                f"model '{name}' needs {mib} MiB on {device_id} but at most {d.budget} MiB "
                f"can be used there ({d.total} MiB total - {d.margin} MiB margin)")
        # A child still starting holds memory the device counts as used but llmd can't
        # measure yet: it may be what `others` seems to use, so it is not held against this.
        others = max(0, b.others - b.pending)
        if mib > d.total - others - d.margin:
            raise NoRoom(
                f"no room to load '{name}': it needs {mib} MiB on {device_id}, and other "
                f"programs use {others} MiB there, which leaves "
                f"{max(0, d.total - others - d.margin)} MiB with the {d.margin} MiB margin "
                "kept free even if every llmd model were unloaded")


def short_devices(need: Mapping[str, int], books: list[Ledger]) -> list[str]:
    """Devices where this need would cross into the margin."""
    return [b.device.id for b in books
            if need.get(b.device.id, 0) and need[b.device.id] > b.room]


def room(books: list[Ledger], device_id: str) -> int:
    """The room left on one device (0 where it has none, or no such device)."""
    return max((max(0, b.room) for b in books if b.device.id == device_id), default=0)
