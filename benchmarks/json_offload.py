"""What one client's large JSON bodies cost every other client, handled on the event loop or not.

``python -m benchmarks.json_offload`` serves ``digits_mlp`` and ``wide`` (an Identity model
over FP32 ``[batch, 65536]``) from one gateway. A small client sends ``digits_mlp`` JSON
requests back to back (one user, closed loop) the whole time; a large client sends JSON
requests of 2, 8 and 32 rows of ``wide`` (about 1.4, 5.6 and 22 MB) one after another, and
gets as much JSON back. Each setting gets its own gateway, alternating for ``--rounds``: the
JSON process (the default, ``http.json_offload_bytes`` 512 KiB) and everything on the loop
(``json_offload_bytes: 0``); and, for reference, the same tensors sent and answered with the
binary extension, which no JSON slows. Writes ``benchmarks/results/json_offload.md``.
"""

from __future__ import annotations

import argparse
import http.client
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.core import RESULTS, _gateway, cpu_model, versions
from workers.affinity import usable_cpus

WIDTH = 65536
LARGE_ROWS = (2, 8, 32)
SETTINGS = {
    "JSON process": {},
    "on the loop": {"http": {"json_offload_bytes": 0}},
    "binary body": {},  # the same tensors sent as binary: what is left without any JSON
}
Request = tuple[bytes, dict[str, str]]
"""A body and its headers."""
SMALL_LIMIT = 200_000  # requests: a bound on the small client whatever the timing


def _wide_model(path: Path) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "wide", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what the ONNX Runtime versions we support all read
    path.mkdir(parents=True)
    save(model, str(path / "model.onnx"))


def _large_body(rows: int, binary: bool) -> Request:
    """A request for ``rows`` rows of ``wide`` and its headers: JSON, or the binary extension."""
    data = np.random.default_rng(rows).random((rows, WIDTH), dtype=np.float32)
    tensor: dict[str, object] = {"name": "x", "datatype": "FP32", "shape": [rows, WIDTH]}
    if binary:
        tensor["parameters"] = {"binary_data_size": data.nbytes}
    else:
        tensor["data"] = data
    doc = {"inputs": [tensor], "outputs": [{"name": "y", "parameters": {"binary_data": binary}}]}
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + data.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


SMALL_BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [3.0] * 64}]})


def _post(conn: http.client.HTTPConnection, model: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    conn.request("POST", f"/v2/models/{model}/infer", body, headers or {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{model}: HTTP {response.status}")


def _small_client(port: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """(start, latency) of each small request until ``stop`` (or :data:`SMALL_LIMIT`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set() and len(samples) < SMALL_LIMIT:
            begin = time.perf_counter()
            _post(conn, "digits_mlp", SMALL_BODY)
            samples.append((begin, time.perf_counter() - begin))
    finally:
        conn.close()


def measure(port: int, bodies: dict[int, Request], repeats: int) -> dict[int, dict[str, list[float]]]:
    """Per large-body size: the large requests' latencies, and the small client's latencies
    while they were in flight and over a quiet second just before."""
    results: dict[int, dict[str, list[float]]] = {}
    large = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        _post(large, "wide", *bodies[min(bodies)])  # the JSON process starts at its first body
        for rows, (body, headers) in bodies.items():
            alone = []
            for _ in range(repeats):  # nothing else running: what the request itself costs
                begin = time.perf_counter()
                _post(large, "wide", body, headers)
                alone.append(time.perf_counter() - begin)
            samples: list[tuple[float, float]] = []
            stop = threading.Event()
            small = threading.Thread(target=_small_client, args=(port, stop, samples))
            small.start()
            try:
                quiet_from = time.perf_counter()
                time.sleep(1.0)  # the small client alone: the reference latency
                quiet_to = time.perf_counter()
                spans, latencies = [], []
                for _ in range(repeats):
                    begin = time.perf_counter()
                    _post(large, "wide", body, headers)
                    end = time.perf_counter()
                    spans.append((begin, end))
                    latencies.append(end - begin)
            finally:
                stop.set()
                small.join()
            during = [lat for start, lat in samples if any(a <= start + lat and start <= b for a, b in spans)]
            quiet = [lat for start, lat in samples if quiet_from <= start and start + lat <= quiet_to]
            results[rows] = {"alone": alone, "large": latencies, "during": during, "quiet": quiet}
    finally:
        large.close()
    return results


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.1f}" if values else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="gateways per setting, alternating")
    parser.add_argument("--repeats", type=int, default=8, help="large bodies of each size per gateway")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from gateway.demo import build_demo

    work = Path(tempfile.mkdtemp(prefix="batchgate-json-offload-"))
    repository = work / "models"
    build_demo(repository, progress=lambda _line: None)
    for name in [p.name for p in repository.iterdir() if p.name != "digits_mlp"]:
        shutil.rmtree(repository / name)
    (repository / "digits_mlp" / "config.yaml").write_text("batching: {max_batch_size: 64}\n")
    _wide_model(repository / "wide" / "1")
    (repository / "wide" / "config.yaml").write_text("batching: {max_batch_size: 32}\ntimeout_ms: 30000\n")
    bodies = {binary: {rows: _large_body(rows, binary) for rows in LARGE_ROWS} for binary in (False, True)}
    pooled: dict[str, dict[int, dict[str, list[float]]]] = {label: {} for label in SETTINGS}
    for round_ in range(args.rounds):
        order = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))
        for label in order:
            print(f"round {round_ + 1}/{args.rounds}: {label}", flush=True)
            gateway = _gateway(repository, work / f"gateway-{round_}-{label.replace(' ', '-')}.log", SETTINGS[label])
            try:
                for rows, found in measure(gateway.port, bodies[label == "binary body"], args.repeats).items():
                    cell = pooled[label].setdefault(rows, {"alone": [], "large": [], "during": [], "quiet": []})
                    for key, values in found.items():
                        cell[key] += values
            finally:
                gateway.stop()
    command = " ".join(["python -m benchmarks.json_offload", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Large JSON bodies: what they cost the other clients",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_model() or platform.machine()}; {usable_cpus()} CPUs; Python {platform.python_version()}; "
        + "; ".join(f"{name} {version}" for name, version in versions().items())
        + f"; {time.strftime('%Y-%m-%d')}  ",
        f"One gateway per setting and round ({args.rounds} rounds, alternating), 2 local workers. A small client "
        "sends `digits_mlp` JSON requests back to back; a large client sends "
        f"{args.repeats} JSON requests of each size to `wide` (Identity, FP32 [rows, {WIDTH}]) one after another "
        "and gets as much JSON back (`binary body`: the same tensors sent and answered with the binary extension, "
        "for reference). "
        "`large ... alone`: the large requests before the small client starts; "
        "`small, alone`: the small client's latency over the second before the large ones; "
        "`small, meanwhile`: its requests that overlapped a large one.",
        "",
        "| JSON handled | large body (each way) | large p50 ms, alone / beside the small client "
        "| small, alone p50 / p99 ms | small, meanwhile p50 / p99 / max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for rows in LARGE_ROWS:
        for label in SETTINGS:
            cell = pooled[label][rows]
            during = cell["during"]
            lines.append(
                f"| {label} | {rows} rows, {len(bodies[label == 'binary body'][rows][0]) / 1e6:.1f} MB | "
                f"{_ms(cell['alone'], 50)} / {_ms(cell['large'], 50)} | "
                f"{_ms(cell['quiet'], 50)} / {_ms(cell['quiet'], 99)} | "
                f"{_ms(during, 50)} / {_ms(during, 99)} / {_ms(during, 100)} |"
            )
    text = "\n".join([*lines, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "json_offload.md").write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
