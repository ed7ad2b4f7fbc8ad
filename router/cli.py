"""`llm-router`: stream, dry-run routes, check configs, list deployments.

Bad input prints one clear line on stderr and exits non-zero (2 for bad input, config or
a missing extra, 1 when a request fails or the state store is unreachable), never a
traceback. Costs in JSON output are rounded to 1e-12 USD, so float noise
(0.000019999999999999998) never reaches the user.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from router.cli_output import (
    EXTRAS,
    StreamOutput,
    event_json,
    is_redis_error,
    round_usd,
    state_problem,
)
from router.cli_tables import decision_table, estimate_text, event_table, summary
from router.config import load_config
from router.core import Router
from router.errors import ConfigError
from router.events import DoneEvent, ErrorEvent, Event, RouteEvent, encode_event
from router.request import RequestError
from router.serving.emitter import Emitter
from router.serving.orchestrator import route_event

app = typer.Typer(
    help="Route LLM requests across providers by task, latency and cost; stream the answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: flags without a `<bool>` type column, values with their type.
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Validate configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

T = TypeVar("T")


def _version(value: bool) -> None:
    if value:
        print(f"llm-router {importlib.metadata.version('llm-stream-router')}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Route LLM requests across providers by task, latency and cost; stream the answer."""


def _console(stderr: bool = False) -> Console:
    # Piped output is not wrapped at 80 columns: tables and summaries stay one row a line.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


err = _console(stderr=True)

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="Config file (default: "
                      "$LLM_ROUTER_CONFIG, ./router.yaml, then the embedded simulated fleet).")]
TaskOpt = Annotated[str | None, typer.Option(help="Task name from the config.")]
ModelOpt = Annotated[str | None, typer.Option(help="Pin one deployment id (no routing).")]
PreferOpt = Annotated[str | None, typer.Option(help="cost | latency | quality | balanced")]
TtftOpt = Annotated[float | None, typer.Option(help="Latency budget for the first token.")]
LatencyOpt = Annotated[float | None, typer.Option(help="Latency budget for the whole answer.")]
CostOpt = Annotated[float | None, typer.Option(help="Hard cost cap in USD for this request.")]
TokensOpt = Annotated[int | None, typer.Option(help="Maximum output tokens.")]


class Exit(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body: clear one-line errors instead of tracebacks."""
    try:
        return fn()
    except Exit as exc:
        if exc.message:
            err.print(exc.message, markup=False)
        raise typer.Exit(exc.code) from None
    except ConfigError as exc:
        err.print(f"config error: {exc}", markup=False)
        raise typer.Exit(2) from None
    except RequestError as exc:
        err.print(f"error: {exc.message}", markup=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("cancelled")
        raise typer.Exit(130) from None
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay writable at exit
        raise typer.Exit(0) from None
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None or os.environ.get("LLM_ROUTER_DEBUG"):
            raise
        err.print(f"error: this needs the `{extra}` extra (no module {exc.name!r}): "
                  f'pip install "llm-stream-router[{extra}]"', markup=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        if os.environ.get("LLM_ROUTER_DEBUG"):
            raise
        if is_redis_error(exc):
            err.print(f"error: the state store (Redis, `state.url`) failed: {exc}", markup=False)
        elif isinstance(exc, OSError | ValueError):
            err.print(f"error: {exc}", markup=False)
        else:
            raise
        raise typer.Exit(1) from None


@dataclass(frozen=True)
class RouteOptions:
    task: str | None
    model: str | None
    prefer: str | None
    max_ttft_ms: float | None
    max_latency_ms: float | None
    max_cost_usd: float | None
    max_tokens: int | None

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _prompt(prompt: str) -> str:
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise Exit(2, "error: the prompt is empty")
    return text


async def _run_stream(router: Router, text: str, opts: RouteOptions, as_json: bool,
                      show_reasoning: bool) -> int:
    out = sys.stdout
    code = 1
    output = StreamOutput(show_reasoning)
    try:
        async with router.stream(text, **opts.as_kwargs()) as events:
            async for ev in events:
                if isinstance(ev, RouteEvent):
                    output.route = ev
                if as_json:
                    out.write(event_json(ev) + "\n")
                    out.flush()
                else:
                    _render(ev, out, output)
                code = _code(ev, code)
    finally:
        await router.aclose()
    return code


def _code(ev: Event, current: int) -> int:
    if isinstance(ev, DoneEvent):
        return 0
    if isinstance(ev, ErrorEvent):
        return 2 if ev.code == "bad_request" else 1
    return current


def _render(ev: Event, out: Any, output: StreamOutput) -> None:
    kind = ev.type
    if kind == "text":
        output.end_reasoning()
        out.write(ev.delta)  # type: ignore[union-attr]
        out.flush()
    elif kind == "reasoning":
        output.reasoning(ev.delta)  # type: ignore[union-attr]
        return
    output.end_reasoning()
    route = output.route
    if isinstance(ev, DoneEvent):
        out.write("\n")
        out.flush()
        err.print(summary(ev), markup=False)
    elif isinstance(ev, ErrorEvent):
        out.flush()
        if ev.code == "no_route" and route is not None:
            err.print(event_table(route))
        err.print(f"error: {ev.code}: {ev.message}", markup=False)
        if ev.suggestion:
            err.print(f"hint: {ev.suggestion}", markup=False)
    elif ev.type in ("retry", "fallback", "budget"):
        err.print(f"[{ev.type}] " + encode_event(ev).decode(), markup=False)


@app.command()
def stream(
    prompt: Annotated[str, typer.Argument(help="The prompt, or - to read it from stdin.")],
    task: TaskOpt = None, model: ModelOpt = None, prefer: PreferOpt = None,
    max_ttft_ms: TtftOpt = None, max_latency_ms: LatencyOpt = None,
    max_cost_usd: CostOpt = None, max_tokens: TokensOpt = None, config: ConfigOpt = None,
    json: Annotated[bool, typer.Option("--json", help="One event per line (NDJSON).")] = False,
    reasoning: Annotated[bool, typer.Option(
        "--reasoning/--no-reasoning", help="Show the model's reasoning on stderr (default) "
        "or hide it; the answer alone goes to stdout.")] = True,
) -> None:
    """Stream a routed answer: tokens to stdout, reasoning and a summary on stderr."""
    opts = RouteOptions(task, model, prefer, max_ttft_ms, max_latency_ms, max_cost_usd,
                        max_tokens)

    def body() -> int:
        text = _prompt(prompt)
        router = Router(load_config(config))
        return asyncio.run(_run_stream(router, text, opts, json, reasoning))

    raise typer.Exit(_guard(body))


@app.command()
def route(
    prompt: Annotated[str, typer.Argument(help="The prompt, or - to read it from stdin.")],
    task: TaskOpt = None, model: ModelOpt = None, prefer: PreferOpt = None,
    max_ttft_ms: TtftOpt = None, max_latency_ms: LatencyOpt = None,
    max_cost_usd: CostOpt = None, max_tokens: TokensOpt = None, config: ConfigOpt = None,
    json: Annotated[bool, typer.Option(
        "--json", help="Print the decision as a `route` event (JSON).")] = False,
) -> None:
    """Dry run: the candidate table, the decision and every exclusion; calls no provider."""
    opts = RouteOptions(task, model, prefer, max_ttft_ms, max_latency_ms, max_cost_usd,
                        max_tokens)

    def body() -> int:
        router = Router(load_config(config))
        decision = router.route(_prompt(prompt), **opts.as_kwargs())
        if json:
            print(event_json(route_event(Emitter("dry-run"), decision)))
        else:
            _console().print(decision_table(decision))
        if decision.chosen is None:
            err.print("error: no_route: no eligible deployment: "
                      + decision.explain_exclusions(), markup=False)
            return 1
        return 0

    raise typer.Exit(_guard(body))


@config_app.command("check")
def config_check(
    path: Annotated[str | None, typer.Argument(help="Config file (default: discovered).")] = None,
) -> None:
    """Validate a config: a summary, or the clear error and exit code 2."""

    def body() -> int:
        loaded = load_config(path)
        cfg = loaded.config
        con = _console()
        con.print(f"{loaded.source}: ok — {len(cfg.providers)} providers, "
                  f"{len(loaded.deployments)} deployments, {len(cfg.tasks)} tasks "
                  f"(default task: {cfg.defaults.task or 'none'})", markup=False)
        for name, prov in cfg.providers.items():
            if prov.api_key is None and prov.api_key_env is not None:
                con.print(f"warning: providers.{name}: {prov.api_key_env} is not set; its "
                          "deployments are excluded from routing until it is", markup=False)
        problem = state_problem(cfg.state.backend, cfg.state.url)
        if problem is not None:
            err.print(f"error: state: {problem}", markup=False)
            return 1
        return 0

    raise typer.Exit(_guard(body))


@app.command()
def deployments(config: ConfigOpt = None) -> None:
    """Deployments with prices, context, latency priors and live state."""

    def body() -> int:
        router = Router(load_config(config))
        health = router.health()
        table = Table(title=f"deployments ({router.loaded.source})", title_justify="left")
        for col in ("id", "provider/model", "$ in/cached/out per Mtok", "context",
                    "prior TTFT ms", "prior tok/s", "quality", "capabilities", "state",
                    "live estimate"):
            table.add_column(col)
        for dep in router.loaded.deployments.values():
            p = dep.price
            cached = p.cached_input_per_mtok if p.cached_input_per_mtok is not None else "-"
            h = health[dep.id]
            state = str(h["breaker"]["state"]) if h["available"] else str(h["reason"])
            table.add_row(dep.id, f"{dep.provider}/{dep.model}",
                          f"{p.input_per_mtok:g} / {cached} / {p.output_per_mtok:g}",
                          f"{dep.context_window:,}", f"{dep.latency_prior.ttft_ms:g}",
                          f"{dep.latency_prior.tokens_per_s:g}", f"{dep.quality:g}",
                          ", ".join(sorted(dep.capabilities)), state,
                          estimate_text(h["estimate"]))
        _console().print(table)
        return 0

    raise typer.Exit(_guard(body))


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes on the one port (needs "
                                         "`state: {backend: redis}`).")] = 1,
) -> None:
    """Run the HTTP server (SSE, WebSocket, OpenAI/Anthropic-compatible endpoints)."""

    def body() -> int:
        if workers > 1 and load_config(config).config.state.backend != "redis":
            raise Exit(2, f"error: --workers {workers} needs a shared state backend: each "
                       "worker would keep its own streams, spend and breakers; set "
                       "`state: {backend: redis, url: ...}` in the config")
        from router.server.app import serve as run_server  # needs the `server` extra

        return run_server(config, host, port, workers=workers)

    raise typer.Exit(_guard(body))


ScopeOpt = Annotated[str | None, typer.Option(
    help="user (every user), user:alice (one), key, session, task:<name>, global.")]
WindowOpt = Annotated[str, typer.Option(help="hour | day | month: the current UTC window.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


@app.command()
def spend(config: ConfigOpt = None, scope: ScopeOpt = None, window: WindowOpt = "day",
          as_json: JsonOpt = False) -> None:
    """Spend by scope and deployment, and the state of each budget."""
    from router.budgets.spend import report_tables

    def body() -> int:
        if window not in ("hour", "day", "month"):
            raise Exit(2, f"error: --window: expected hour, day or month, got {window!r}")
        loaded = load_config(config)
        if loaded.config.state.backend == "memory":
            err.print("note: state is in memory, so this shows this process only; configure "
                      "`state: {backend: redis}` to share spend between processes", markup=False)

        async def run() -> Any:
            async with Router(loaded) as router:
                return await router.spend(scope, window)  # type: ignore[arg-type]

        report = asyncio.run(run())
        if as_json:
            print(orjson.dumps(round_usd(report.model_dump(mode="json")),
                               option=orjson.OPT_INDENT_2).decode())
        else:
            for table in report_tables(report):
                _console().print(table)
        return 0

    raise typer.Exit(_guard(body))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
