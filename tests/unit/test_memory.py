"""Devices, NVML degradation, estimates and the memory books."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from llmd.memory import books
from llmd.memory import estimate
from llmd.memory import gguf_meta
from llmd.models.catalog import ModelSpec
from llmd.errors import NoRoom, TooBig
from llmd.memory.devices import Device, Devices, Nvml, parse_meminfo, process_host_use

MIB = 1 << 20


class FakePynvml:
    """Just enough of pynvml: two GPUs, one process on the first."""

    def __init__(self, gpus=((80 * 1024, 70 * 1024), (24 * 1024, 24 * 1024)), procs=None):
        self.gpus = gpus
        self.procs = procs or {}

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        total, free = self.gpus[h]
        return SimpleNamespace(total=total * MIB, free=free * MIB, used=(total - free) * MIB)

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3" if h == 0 else "NVIDIA L4"

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=mib * MIB)
                for pid, (gpu, mib) in self.procs.items() if gpu == h]


class NoDriver:
    def nvmlInit(self):
        raise RuntimeError("NVML Shared Library Not Found")


def test_meminfo_gives_total_and_available():
    text = "MemTotal:       24683656 kB\nMemFree:  100 kB\nMemAvailable:   24179052 kB\n"
    assert parse_meminfo(text) == (24683656 // 1024, 24179052 // 1024)


def test_own_process_use_is_read_from_proc():
    import os
    assert process_host_use(os.getpid()) > 0
    assert process_host_use(2 ** 22 + 12345) is None


def test_no_driver_means_host_only_logged_once_without_traceback(caplog):
    caplog.set_level(logging.INFO, logger="llmd.memory")
    devices = Devices(1024, nvml=Nvml(NoDriver()))
    table = devices.read()
    assert [d.id for d in table] == ["host"]
    assert table[0].margin == 1024 and table[0].total > 0
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "host memory only" in record.message
    assert record.exc_info is None


def test_stubbed_gpus_become_devices_with_their_own_margins():
    devices = Devices(1024, {"gpu1": 4096}, nvml=Nvml(FakePynvml()))
    table = {d.id: d for d in devices.read()}
    assert set(table) == {"host", "gpu0", "gpu1"}
    assert table["gpu0"] == Device("gpu0", "NVIDIA H100 80GB HBM3", 81920, 71680, 1024)
    assert table["gpu1"].margin == 4096 and table["gpu1"].budget == 24 * 1024 - 4096


def test_child_use_on_gpu_comes_from_nvml():
    import os
    devices = Devices(1024, nvml=Nvml(FakePynvml(procs={os.getpid(): (1, 3000)})))
    use = devices.process_use(os.getpid())
    assert use["gpu1"] == 3000 and use["host"] > 0 and "gpu0" not in use


def test_fit_params_output_is_summed_per_device():
    out = "garbage\nHost 222 27 524 \nCUDA0 1000 200 300\nCUDA1 10 0 5\n"
    assert estimate.parse_fit_output(out) == {"host": 773, "gpu0": 1500, "gpu1": 15}


def test_server_only_arguments_are_not_passed_to_fit_params():
    spec = ModelSpec(name="m", path="/m.gguf", args=("--ctx-size", "512", "--api-key", "k"))
    assert estimate.fit_args(spec) == ["--model", "/m.gguf", "--ctx-size", "512"]


def test_gguf_estimate_grows_with_context():
    shape = {"weights": 100 * MIB, "layers": 10, "embd": 512, "kv_heads": 2, "key_length": 64,
             "value_length": 64, "n_ctx_train": 8192, "n_vocab": 1000}
    small = gguf_meta.estimate_from_shape(shape, ["--ctx-size", "1024"])
    big = gguf_meta.estimate_from_shape(shape, ["-c", "65536"])
    q8 = gguf_meta.estimate_from_shape(shape, ["-c", "65536", "-ctk", "q8_0", "-ctv", "q8_0"])
    assert 100 < small < big and q8 < big
    # 65536 tokens x 10 layers x 2 heads x (64 + 64) x 2 bytes = 320 MiB of KV cache
    assert big - small == pytest.approx(320 - 5, abs=2)


def test_garbage_is_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(gguf_meta.GGUFError, match="not a readable GGUF"):
        gguf_meta.estimate_mib(str(bad), [])


@pytest.fixture
def fit_calls(monkeypatch) -> list:
    """llama-fit-params faked to need 500 MiB of host memory; the arguments of each call."""
    calls = []

    async def fake_fit(tool, args, timeout):
        calls.append(args)
        return {"host": 500}

    monkeypatch.setattr(estimate, "run_fit_params", fake_fit)
    monkeypatch.setattr(estimate, "find_fit_params", lambda server: "/bin/fit")
    return calls


async def test_estimates_are_cached_on_disk_by_file_and_args(tmp_path, fit_calls):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    spec = ModelSpec(name="m", path=str(model), args=("-c", "512"))
    first = estimate.Estimator("/x/llama-server", str(tmp_path / "state"))
    assert (await first.need(spec)).mib == {"host": 500}
    again = estimate.Estimator("/x/llama-server", str(tmp_path / "state"))  # a restart
    assert (await again.need(spec)).source == "llama-fit-params"
    assert len(fit_calls) == 1
    await again.need(ModelSpec(name="m", path=str(model), args=("-c", "1024")))
    assert len(fit_calls) == 2


async def test_estimates_made_with_another_llama_cpp_build_are_not_reused(tmp_path, fit_calls):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    server = tmp_path / "bin" / "llama-server"
    server.parent.mkdir()
    server.write_bytes(b"build 1")
    spec = ModelSpec(name="m", path=str(model), args=("-c", "512"))
    await estimate.Estimator(str(server), str(tmp_path / "state")).need(spec)
    await estimate.Estimator(str(server), str(tmp_path / "state")).need(spec)
    assert len(fit_calls) == 1
    server.write_bytes(b"build 2, older or newer")  # the operator swapped llama.cpp builds
    await estimate.Estimator(str(server), str(tmp_path / "state")).need(spec)
    assert len(fit_calls) == 2


def test_books_count_free_memory_other_programs_and_bookings():
    # 10 GiB host, 7000 free; llmd's one child holds 1000 of the used 3000 (anonymous).
    devices = [Device("host", "h", 10000, 7000, 1000), Device("gpu0", "g", 8000, 8000, 1000)]
    holding = books.Holding({"host": 800}, {"host": 200}, {"host": 1200})
    (host, gpu) = books.ledgers(devices, [holding], [{"host": 1000}])
    assert host.others == 2000 and host.booked == 1200 and host.growth == 200
    assert host.room == 10000 - 2000 - 1200 - 1000
    assert gpu.room == 7000 and gpu.others == 0
    assert books.short_devices({"host": 5800}, [host, gpu]) == []
    assert books.short_devices({"host": 5801, "gpu0": 7001}, [host, gpu]) == ["host", "gpu0"]


def test_a_booking_is_estimate_plus_growth_or_measured_use_if_larger():
    assert books.Holding({"host": 800}, {"host": 200}, {"host": 400}).booked() == {"host": 1000}
    assert books.Holding({"host": 800}, {}, {"host": 1500}).booked() == {"host": 1500}
    assert books.Holding({}, {"host": 64}, {}).need() == {"host": 64}


def test_a_model_bigger_than_the_machine_is_refused_with_numbers():
    devices = [Device("host", "h", 10000, 9000, 1000)]
    with pytest.raises(TooBig) as info:
        books.check_fits_alone("huge", {"host": 9500}, books.ledgers(devices, [], []))
    assert info.value.status == 507
    assert "needs 9500 MiB on host" in str(info.value) and "9000 MiB" in str(info.value)


def test_a_model_other_programs_leave_no_room_for_is_refused_with_503():
    devices = [Device("host", "h", 10000, 3000, 1000)]
    ledgers = books.ledgers(devices, [books.Holding({"host": 500})], [{"host": 500}])
    with pytest.raises(NoRoom) as info:
        books.check_fits_alone("m", {"host": 3000}, ledgers)
    assert info.value.status == 503 and "other programs use 6500 MiB" in str(info.value)
    books.check_fits_alone("m", {"host": 2500}, ledgers)  # fits once llmd's model goes


def test_a_child_still_starting_is_not_taken_for_another_program():
    # Its memory reads as used, and it can't be measured yet: its booking stands for it.
    devices = [Device("host", "h", 10000, 3000, 1000)]
    ledgers = books.ledgers(devices, [books.Holding({"host": 6000})], [None])
    books.check_fits_alone("m", {"host": 2500}, ledgers)


def test_host_add_back_is_anonymous_memory_not_mapped_files(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text(
        "Name:\tllama-server\nVmRSS:\t 409600 kB\nRssAnon:\t 102400 kB\n"
        "RssFile:\t 302080 kB\nRssShmem:\t 5120 kB\n")
    devices = Devices(1024, nvml=Nvml(NoDriver()), proc=str(tmp_path))
    assert devices.add_back([42, 43]) == {42: {"host": 105}, 43: {}}
