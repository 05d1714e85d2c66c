"""The one HTTP client of the trainer API (DESIGN §4), used by the dashboard, the CLI and tests.

Synchronous on purpose: the dashboard calls it from worker threads (`nicegui.run.io_bound`),
scripts and tests call it directly. Errors become `TrainerError` (the API's `detail`, status) or
`TrainerUnavailable` (cannot connect, timed out), so callers can show a clear message and retry.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator
from urllib.parse import quote

import httpx


class TrainerError(Exception):
    """The trainer answered with an error."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class TrainerUnavailable(TrainerError):
    """The trainer could not be reached (down, wrong address, network)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach the trainer at {url}: {reason}")


class TrainerClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "TrainerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise TrainerUnavailable(self.base_url, f"{type(e).__name__}: {e}") from e
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise TrainerError(response.status_code, detail)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    # ---- the API -----------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/api/health")

    def state(self) -> dict:
        return self._json("GET", "/api/state")

    def fingerprints(self) -> dict:
        """sha256 of the model's and the task heads' tensors (waits for the current step)."""
        return self._json("GET", "/api/fingerprints")

    def train(self, action: str, steps: int | None = None) -> dict:
        body = {"action": action} | ({"steps": steps} if steps is not None else {})
        return self._json("POST", "/api/train", json=body)

    def set_lr(self, lr: float) -> dict:
        return self._json("PUT", "/api/lr", json={"lr": lr})

    def registry(self, kind: str = "tasks") -> dict:
        return self._json("GET", f"/api/registry/{kind}")

    def add_task(self, type: str, name: str | None = None, weight: float | None = None,
                 latent: str | None = None, dataset: str | None = None, isolation: str | None = None,
                 params: dict | None = None) -> dict:
        fields = {"name": name, "weight": weight, "latent": latent, "dataset": dataset, "isolation": isolation}
        body = {"type": type, **{k: v for k, v in fields.items() if v is not None}, "params": params or {}}
        return self._json("POST", "/api/tasks", json=body)

    def update_task(self, name: str, weight: float | None = None, enabled: bool | None = None) -> dict:
        body = {k: v for k, v in {"weight": weight, "enabled": enabled}.items() if v is not None}
        return self._json("PATCH", f"/api/tasks/{name}", json=body)

    def remove_task(self, name: str) -> None:
        self._json("DELETE", f"/api/tasks/{name}")

    def metrics(self, keys: list[str] | None = None, since: int | None = None, until: int | None = None,
                max_points: int = 2000, run: int | None = None, ancestors: bool = False) -> dict[str, dict[str, list]]:
        params: dict[str, Any] = {"max_points": max_points} | ({"ancestors": "true"} if ancestors else {})
        if keys:
            params["keys"] = ",".join(keys)
        params |= {k: v for k, v in {"since": since, "until": until, "run": run}.items() if v is not None}
        return self._json("GET", "/api/metrics", params=params)["series"]

    def runs(self) -> list[dict]:
        return self._json("GET", "/api/runs")

    def evaluate(self) -> dict:
        return self._json("POST", "/api/eval")

    def evals(self, limit: int = 100) -> list[dict]:
        return self._json("GET", "/api/evals", params={"limit": limit})

    def reconstructions_png(self, n: int = 8) -> bytes:
        return self.request("GET", "/api/images/reconstructions.png", params={"n": n}).content

    def checkpoints(self) -> list[dict]:
        return self._json("GET", "/api/checkpoints")

    def checkpoint_metrics(self, checkpoint_id: str, keys: list[str] | None = None,
                           max_points: int = 2000) -> dict[str, dict[str, list]]:
        """The curves that led to a checkpoint, across the runs of its ancestors."""
        params: dict[str, Any] = {"max_points": max_points} | ({"keys": ",".join(keys)} if keys else {})
        return self._json("GET", f"/api/checkpoints/{checkpoint_id}/metrics", params=params)["series"]

    def save_checkpoint(self, name: str | None = None) -> dict:
        return self._json("POST", "/api/checkpoints", json={"name": name} if name else {})

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self._json("DELETE", f"/api/checkpoints/{checkpoint_id}")

    def load_checkpoint(self, checkpoint_id: str) -> dict:
        return self._json("POST", f"/api/checkpoints/{checkpoint_id}/load")

    def fork_checkpoint(self, checkpoint_id: str, name: str) -> dict:
        return self._json("POST", f"/api/checkpoints/{checkpoint_id}/fork", json={"name": name})

    # ---- devices (M4) ------------------------------------------------------------------------------
    def devices(self) -> dict:
        """The machine's devices (memory, utilisation) and the roles: train, eval, mode, ranks."""
        return self._json("GET", "/api/devices")

    def set_devices(self, **roles: Any) -> dict:
        """`train="cuda:0"`, `eval="cuda:1"` (or `eval=None`: evaluate on the training thread)."""
        return self._json("PUT", "/api/devices", json=roles)

    # ---- model expansion (M6) ------------------------------------------------------------------
    def model_layers(self) -> dict:
        """The live model's layers, its places to grow (`points`) and its parameter count."""
        return self._json("GET", "/api/model/layers")

    def expand_model(self, where: str, init: str = "identity", seed: int | None = None) -> dict:
        """Grow the live model by a layer; {"state", "checkpoint" (the new node), "autosaved"}."""
        body = {"where": where, "init": init} | ({"seed": seed} if seed is not None else {})
        return self._json("POST", "/api/model/expand", json=body)

    # ---- factoring evaluation (M5) --------------------------------------------------------------
    @staticmethod
    def _checkpoint_path(checkpoint_id: str) -> str:
        return f"/api/checkpoints/{quote(checkpoint_id, safe='')}"

    def start_factoring(self, checkpoint_id: str, seeds: int | None = None,
                        traversal_seeds: int | None = None) -> dict:
        """Start the factoring evaluation of a checkpoint; returns the job (kind `factoring`),
        followed by `factoring` stream events (or `job(id)`)."""
        body = {k: v for k, v in {"seeds": seeds, "traversal_seeds": traversal_seeds}.items() if v is not None}
        return self._json("POST", f"{self._checkpoint_path(checkpoint_id)}/factoring", json=body)

    def factoring(self, checkpoint_id: str) -> dict:
        """The checkpoint's newest factoring report; TrainerError 404 before the first."""
        return self._json("GET", f"{self._checkpoint_path(checkpoint_id)}/factoring")

    def factoring_or_none(self, checkpoint_id: str) -> dict | None:
        """The same, or None where the trainer has none (404: no report yet, or no such checkpoint)."""
        try:
            return self.factoring(checkpoint_id)
        except TrainerUnavailable:
            raise
        except TrainerError as e:
            if e.status == 404:
                return None
            raise

    def figure_png(self, checkpoint_id: str, kind: str, group: str | None = None) -> bytes:
        """A figure of the newest report: `traversal` or `activation` of a slot `group`, or `attention`."""
        params = {"group": group} if group is not None else {}
        return self.request("GET", f"{self._checkpoint_path(checkpoint_id)}/figures/{quote(kind, safe='')}.png",
                            params=params).content

    def run_recipe(self, name: str, params: dict | None = None) -> dict:
        return self._json("POST", f"/api/recipes/{name}/run", json={"params": params or {}})

    def jobs(self) -> list[dict]:
        return self._json("GET", "/api/jobs")

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/api/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict:
        return self._json("POST", f"/api/jobs/{job_id}/cancel")

    def datasets(self) -> list[dict]:
        return self._json("GET", "/api/datasets")

    def generate_dataset(self, generator: str, name: str, n: int, seed: int = 0, params: dict | None = None) -> dict:
        """Start generating; returns the job (follow it with `job(id)` or the stream)."""
        return self._json("POST", "/api/datasets", json={"generator": generator, "name": name, "n": n,
                                                         "seed": seed, "params": params or {}})

    def dataset(self, name: str) -> dict:
        return self._json("GET", f"/api/datasets/{name}")

    def delete_dataset(self, name: str) -> None:
        self.request("DELETE", f"/api/datasets/{name}")

    def dataset_grid_png(self, name: str, n: int = 64, seed: int = 0, target: str | None = None,
                         sort: bool = False, columns: int = 8) -> bytes:
        params = {"n": n, "seed": seed, "sort": sort, "columns": columns} | ({"target": target} if target else {})
        return self.request("GET", f"/api/datasets/{name}/grid.png", params=params).content

    def dataset_histograms(self, name: str, bins: int = 30, target: str | None = None,
                           lo: float | None = None, hi: float | None = None) -> dict:
        params = {"bins": bins, "target": target, "lo": lo, "hi": hi}
        return self._json("GET", f"/api/datasets/{name}/histograms",
                          params={k: v for k, v in params.items() if v is not None})

    def stream(self, stop: threading.Event | None = None) -> Iterator[dict]:
        """Server-sent events as `{"event": type, "data": parsed JSON}`, until `stop` is set or the
        connection ends. Keep-alives arrive every ~15 s, so a 45 s read timeout means a dead link."""
        timeout = httpx.Timeout(10.0, read=45.0)
        try:
            with self._http.stream("GET", "/api/stream", timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise TrainerError(response.status_code, response.text)
                event, data = "message", []
                for line in response.iter_lines():
                    if stop is not None and stop.is_set():
                        return
                    if line == "":
                        if data:
                            yield {"event": event, "data": json.loads("\n".join(data))}
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except httpx.TransportError as e:
            raise TrainerUnavailable(self.base_url, f"{type(e).__name__}: {e}") from e
