"""``batchgate``: serve, worker, models demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__


def _serve(args: argparse.Namespace) -> int:
    import ssl

    import uvicorn

    from gateway import logs
    from gateway.app import Gateway
    from gateway.config import ConfigError, load_server_config
    from gateway.rest.protocol import guarded_protocol
    from gateway.server import DrainingServer
    from workers.affinity import confine, parse_cpus
    from workers.allocator import keep_freed_memory

    overrides: dict[str, Any] = {}
    if args.model_repository is not None:
        overrides["model_repository"] = str(args.model_repository)
    http: dict[str, Any] = {}
    if args.host is not None:
        http["host"] = args.host
    if args.http_port is not None:
        http["port"] = args.http_port
    if http:
        overrides["http"] = http
    if args.grpc_port is not None:
        overrides["grpc"] = {"port": args.grpc_port} if args.grpc_port >= 0 else {"enabled": False}
    if args.metrics_port is not None:
        overrides["metrics"] = {"port": args.metrics_port} if args.metrics_port >= 0 else {"enabled": False}
    if args.replicas is not None:
        overrides["pools"] = {"default": {"replicas": args.replicas}}
    try:
        config = load_server_config(args.config, overrides)
        logs.setup(config.log_level, args.log_format)
        keep_freed_memory()
        if config.cpus is not None:
            try:
                confine(parse_cpus(config.cpus))  # before any worker starts: they get the CPUs it had
            except OSError as exc:
                raise ConfigError(f"cpus: {exc}") from None
        gateway = Gateway(config)
    except ConfigError as exc:
        print(f"batchgate: configuration error:\n{exc}", file=sys.stderr)
        return 2
    server = DrainingServer(
        uvicorn.Config(
            gateway.app,
            host=config.http.host,
            port=config.http.port,
            loop="uvloop",
            http=guarded_protocol(config.limits, gateway.front, gateway.auth),
            ssl_certfile=config.tls.cert_file,
            ssl_keyfile=config.tls.key_file,
            ssl_ca_certs=config.tls.client_ca_file,
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.tls.client_ca_file else ssl.CERT_NONE,
            timeout_keep_alive=5,
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(config.drain_timeout_s),
        ),
        gateway.drain,
        config.drain_timeout_s,
    )
    connections = server.server_state.connections  # read at each scrape: nothing per connection
    gateway.metrics.open_connections.labels("http").set_function(lambda: len(connections))
    gateway.metrics.max_connections.labels("http").set(config.limits.max_connections)
    # The operations port opens at the end of the gateway's startup, and uvicorn binds the HTTP
    # port only after that: ready there waits for the HTTP port too.
    gateway.ops_port.ready = lambda: server.started and gateway.dataplane.ready()
    server.run()
    return 0


def _worker(argv: Sequence[str]) -> int:
    from workers.main import main

    return main(argv)


def _loadtest(argv: Sequence[str]) -> int:
    try:
        from loadtests.run import main
    except ImportError as exc:
        print(f"batchgate loadtest runs from a batchgate checkout with the 'loadtest' extra: {exc}", file=sys.stderr)
        return 2
    return main(list(argv))


def _profile(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from gateway.health import PROFILE_FILE, build_profile

    folder = args.model_repository / args.model
    if not folder.is_dir():
        print(f"batchgate models profile: no model folder {folder}", file=sys.stderr)
        return 2
    try:
        data = np.load(args.data, allow_pickle=False)
    except (OSError, ValueError) as exc:
        print(f"batchgate models profile: cannot read {args.data}: {exc}", file=sys.stderr)
        return 2
    if data.ndim < 2 or len(data) < 10:
        print("batchgate models profile: need an array of at least 10 rows [rows, ...features]", file=sys.stderr)
        return 2
    profile = build_profile(data, args.input, args.bins)
    (folder / PROFILE_FILE).write_text(json.dumps(profile))
    print(f"wrote {folder / PROFILE_FILE}: {len(profile['features'])} features from {len(data)} rows")
    return 0


def _token(args: argparse.Namespace) -> int:
    import secrets

    import yaml

    from gateway.auth import hash_token

    token = secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": args.name, "sha256": hash_token(token)}
    if args.models:
        entry["models"] = args.models.split(",")
    if args.admin:
        entry["admin"] = True
    print(f"token (shown once, give it to the client): {token}", file=sys.stderr)
    print(yaml.safe_dump({"tokens": [entry]}, sort_keys=False), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import build_demo

    build_demo(args.directory)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchgate", description="Inference-serving gateway for ONNX models.")
    parser.add_argument("--version", action="version", version=f"batchgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway and its local worker pool")
    serve.add_argument("--config", type=Path, help="batchgate.yaml (every field has a default)")
    serve.add_argument("--model-repository", type=Path, help="model repository folder (overrides the config)")
    serve.add_argument("--host", help="HTTP listen address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; -1 disables gRPC)")
    serve.add_argument(
        "--metrics-port", type=int, help="operations port: /metrics and health probes (default 8002; -1 disables it)"
    )
    serve.add_argument("--replicas", type=int, help="worker processes in the default pool (default 2)")
    serve.add_argument("--log-format", choices=["json", "text"], default="json")
    serve.set_defaults(handler=_serve)

    commands.add_parser("worker", help="run one worker process (see: batchgate worker --help)", add_help=False)
    commands.add_parser("controller", help="the autoscaling controller as its own process", add_help=False)
    commands.add_parser(
        "loadtest", help="locust load test with an SLO verdict (see: batchgate loadtest --help)", add_help=False
    )

    tokens = commands.add_parser("token", help="bearer tokens for auth.tokens_file")
    token_commands = tokens.add_subparsers(dest="token_command", required=True)
    token = token_commands.add_parser("new", help="make a token; prints it once and its hashed entry")
    token.add_argument("--name", required=True)
    token.add_argument("--models", help="comma-separated models it may use (default: all)")
    token.add_argument("--admin", action="store_true", help="may load, unload and promote models")
    token.set_defaults(handler=_token)

    models = commands.add_parser("models", help="model repository tools")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    demo = model_commands.add_parser("demo", help="build the demo model repository (no downloads)")
    demo.add_argument("directory", type=Path, nargs="?", default=Path("models"))
    demo.set_defaults(handler=_demo)
    profile = model_commands.add_parser("profile", help="save a model's reference input profile (drift baseline)")
    profile.add_argument("model")
    profile.add_argument("data", type=Path, help=".npy array of reference inputs, rows first")
    profile.add_argument("--input", default="input", help="the model input these rows feed")
    profile.add_argument("--model-repository", type=Path, default=Path("models"))
    profile.add_argument("--bins", type=int, default=10)
    profile.set_defaults(handler=_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        return _worker(argv[1:])
    if argv and argv[0] == "loadtest":
        return _loadtest(argv[1:])
    if argv and argv[0] == "controller":
        from gateway.autoscaler.standalone import main as controller_main

        return controller_main(argv[1:])
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
