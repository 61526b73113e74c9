"""The memory books: what running models hold per device, and whether one more fits."""

from __future__ import annotations

from typing import Iterable, Mapping

from .errors import TooBig
from .memory import Device


def held(need: Mapping[str, int] | None, measured: Mapping[str, int] | None) -> dict[str, int]:
    """What a model holds per device: its measured use where known, else its estimate."""
    books = dict(need or {})
    books.update(measured or {})
    return books


def committed(holdings: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The sum of holdings per device."""
    total: dict[str, int] = {}
    for holding in holdings:
        for device, mib in holding.items():
            total[device] = total.get(device, 0) + mib
    return total


def check_fits_alone(name: str, need: Mapping[str, int], devices: list[Device]) -> None:
    """Raise TooBig when the model can't fit even on an otherwise empty machine."""
    by_id = {d.id: d for d in devices}
    for device_id, mib in need.items():
        device = by_id.get(device_id)
        if device is None:
            raise TooBig(f"model '{name}' needs {mib} MiB on {device_id}, "
                         "which this machine does not have")
        if mib > device.budget:
            raise TooBig(
                f"model '{name}' needs {mib} MiB on {device_id} but at most {device.budget} MiB "
                f"can be used there ({device.total} MiB total - {device.margin} MiB margin)")


def short_devices(need: Mapping[str, int], devices: list[Device],
                  in_use: Mapping[str, int]) -> list[str]:
    """Devices where the committed memory plus this need would cross into the margin."""
    return [d.id for d in devices
            if need.get(d.id, 0) and in_use.get(d.id, 0) + need[d.id] > d.budget]


def device_table(devices: list[Device], in_use: Mapping[str, int]) -> list[dict[str, object]]:
    """Devices as status reports them."""
    return [{"id": d.id, "name": d.name, "total_mib": d.total, "free_mib": d.free,
             "margin_mib": d.margin, "committed_mib": in_use.get(d.id, 0)} for d in devices]
