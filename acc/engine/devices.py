"""The devices a trainer can use and what each is doing (M4): `DeviceManager`.

Each CUDA device with its name, total and used memory and utilisation, read through NVML
(`nvidia-ml-py`) where the driver has it (else through torch, without utilisation); the CPU with
its load and memory through `psutil`. A thread polls them once a second, so reading the list never
waits. The roles (which device trains, which evaluates) belong to the engine
(`acc.engine.device_commands`); this module describes the hardware and checks a device name.
"""

from __future__ import annotations

import functools
import logging
import platform
import threading
from dataclasses import asdict, dataclass

import psutil
import torch

log = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass
class DeviceInfo:
    name: str  # "cpu", "cuda:0"
    kind: str  # "cpu" | "cuda"
    description: str  # the model name, e.g. "NVIDIA H200", or the CPU's core count
    memory_total: int | None  # bytes
    memory_used: int | None
    utilization: float | None  # 0..100 %, None where it cannot be read


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def numerics(device: torch.device, ranks: int = 1) -> dict:
    """What decides the bits of a training step besides the seed: torch's version, the device
    (and on a GPU its model and CUDA), on the CPU its model, the kernels' instruction set and the
    intra-op thread count of the calling thread (reductions split by thread sum in another order),
    and the data-parallel ranks. Two runs of one seed agree bitwise only where all of these agree;
    else they part at the first step, and after thousands of steps they are different draws."""
    record = {"torch": torch.__version__, "device": str(device), "ranks": ranks}
    if device.type == "cuda":
        record.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    else:
        record.update(cpu_model=cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                      threads=torch.get_num_threads())
    return record


@functools.cache
def cpu_model() -> str:
    """The processor's model name (e.g. "AMD EPYC"); where the system does not say, its
    architecture. It belongs to the numerics: the math libraries choose kernels by processor too,
    so one instruction set on an Intel and on an AMD CPU (AVX2 on both) trains one seed to other
    weights."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def check_device(name: str) -> str:
    """The canonical name of a device this machine has: "cpu" or "cuda:N" ("cuda" is "cuda:0");
    ValueError, listing the devices, otherwise."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    known = ["cpu", *(f"cuda:{i}" for i in range(count))]
    canonical = "cuda:0" if name == "cuda" else name
    if canonical not in known:
        raise ValueError(f"no device {name!r} on this machine; devices: {', '.join(known)}")
    return canonical


def _nvml():
    """The NVML module, initialised, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no GPU: described through torch instead
        return None


class DeviceManager:
    """Lists the devices, polled once a second on a thread of its own."""

    def __init__(self, poll_s: float = POLL_S, nvml: bool = True) -> None:
        self._nvml = _nvml() if nvml else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        psutil.cpu_percent(None)  # the first reading is against process start; prime it
        self._devices = self._read()
        self.source = "nvml" if self._nvml is not None else ("torch" if torch.cuda.is_available() else "none")
        self._thread = threading.Thread(target=self._poll, args=(poll_s,), name="acc-devices", daemon=True)
        self._thread.start()

    def list(self) -> list[dict]:
        with self._lock:
            return [asdict(d) for d in self._devices]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _poll(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                devices = self._read()
            except Exception as e:  # a failing reading must not end the polling
                log.warning("reading the devices failed: %s", e)
                continue
            with self._lock:
                self._devices = devices

    def _read(self) -> list[DeviceInfo]:
        memory = psutil.virtual_memory()
        devices = [DeviceInfo("cpu", "cpu", f"{psutil.cpu_count()} cores", memory.total, memory.total - memory.available,
                              psutil.cpu_percent(None))]
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for index in range(count):
            devices.append(self._cuda(index))
        return devices

    def _cuda(self, index: int) -> DeviceInfo:
        if self._nvml is not None:
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                name = self._nvml.nvmlDeviceGetName(handle)
                return DeviceInfo(f"cuda:{index}", "cuda", name.decode() if isinstance(name, bytes) else name,
                                  int(mem.total), int(mem.used), float(util.gpu))
            except Exception as e:  # e.g. CUDA_VISIBLE_DEVICES reorders what NVML numbers
                log.debug("NVML could not read cuda:%d: %s", index, e)
        free, total = torch.cuda.mem_get_info(index)
        return DeviceInfo(f"cuda:{index}", "cuda", torch.cuda.get_device_name(index), int(total), int(total - free), None)
