"""The `llm-router` CLI: output where a user looks for it, exit codes, no tracebacks."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from router.cli import app
from router.events import decode_event

FAST_FLEET = """
version: 1
providers:
  sim: {kind: simulated, options: {seed: 3}}
deployments:
  - {id: fast, provider: sim, model: sim-flash, context_window: 32000, quality: 0.5,
     price: {input_per_mtok: 0.1, output_per_mtok: 0.4},
     latency_prior: {ttft_ms: 100, tokens_per_s: 400}, options: {output_tokens: 12}}
  - {id: strong, provider: sim, model: sim-pro, context_window: 200000, quality: 0.9,
     price: {input_per_mtok: 3, output_per_mtok: 15},
     latency_prior: {ttft_ms: 900, tokens_per_s: 50}, options: {output_tokens: 12}}
tasks:
  general: {candidates: [fast, strong], prefer: balanced}
  chat: {candidates: [fast, strong], prefer: latency, max_ttft_ms: 500}
defaults: {task: general}
"""


@pytest.fixture
def fleet(tmp_path: Path) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(FAST_FLEET)
    return str(path)


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def test_stream_prints_tokens_on_stdout_and_the_summary_on_stderr(cli: CliRunner,
                                                                   fleet: str) -> None:
    result = cli.invoke(app, ["stream", "Explain circuit breakers", "--config", fleet])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.split()) == 12  # the answer's 12 tokens, nothing else
    summary = result.stderr
    for part in ("TTFT", "tok/s", "tokens in", "cost $", "finish stop", "attempts 1"):
        assert part in summary
    assert "fast" in summary or "strong" in summary


def test_stream_json_writes_one_valid_event_per_line(cli: CliRunner, fleet: str) -> None:
    result = cli.invoke(app, ["stream", "hi", "--config", fleet, "--json"])
    assert result.exit_code == 0
    events = [decode_event(line) for line in result.stdout.splitlines()]
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[0].type == "route" and events[-1].type == "done"
    assert sum(e.type == "text" for e in events) == 12


def test_stream_reads_the_prompt_from_stdin(cli: CliRunner, fleet: str) -> None:
    result = cli.invoke(app, ["stream", "-", "--config", fleet, "--json"],
                        input="a prompt from a pipe\n")
    assert result.exit_code == 0
    assert decode_event(result.stdout.splitlines()[-1]).type == "done"


def test_impossible_cost_cap_explains_every_exclusion_and_fails(cli: CliRunner,
                                                                 fleet: str) -> None:
    result = cli.invoke(app, ["stream", "hi", "--max-cost-usd", "0.0000001", "--config", fleet])
    assert result.exit_code == 1
    assert result.stdout == ""
    err = result.stderr
    assert "error: no_route" in err
    for dep in ("fast", "strong"):
        assert f"{dep}: max_cost_usd: estimated $" in err
    assert "hint:" in err


def test_route_is_a_dry_run_with_the_same_table(cli: CliRunner, tmp_path: Path) -> None:
    # A real HTTP provider on a port nobody listens on: `route` must not call it.
    path = tmp_path / "remote.yaml"
    path.write_text(FAST_FLEET.replace(
        "sim: {kind: simulated, options: {seed: 3}}",
        "sim: {kind: simulated, options: {seed: 3}}\n"
        "  remote: {kind: openai_compatible, base_url: 'http://127.0.0.1:9/v1', api_key: k}",
    ).replace("provider: sim, model: sim-flash", "provider: remote, model: m"))
    result = cli.invoke(app, ["route", "hi", "--config", str(path), "--task", "chat"])
    assert result.exit_code == 0, result.stderr
    table = result.stdout
    assert "route: fast" in table and "chosen" in table
    assert "max_ttft_ms: estimated 900 ms > 500 ms" in table

    refused = cli.invoke(app, ["route", "hi", "--config", str(path), "--max-cost-usd", "1e-9"])
    assert refused.exit_code == 1
    assert refused.stdout.count("max_cost_usd: estimated") == 2
    assert "no_route" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stream", "hi", "--task", "nope"], "unknown task 'nope'"),
        (["stream", "hi", "--model", "nope"], "unknown model 'nope'"),
        (["stream", "hi", "--prefer", "cheap"], "prefer: Input should be 'cost', 'latency'"),
        (["stream", "hi", "--max-tokens", "0"], "max_tokens: Input should be greater than 0"),
        # Once a traceback (spend is counted in integer nano-dollars).
        (["stream", "hi", "--max-cost-usd", "1e308"], "max_cost_usd: Input should be less"),
        (["route", "hi", "--max-cost-usd", "nan"], "max_cost_usd: Input should be a finite"),
        (["stream", "   "], "the prompt is empty"),
        (["route", "hi", "--task", "nope"], "unknown task 'nope'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(cli: CliRunner, fleet: str, args: list[str],
                                               message: str) -> None:
    result = cli.invoke(app, [*args, "--config", fleet])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_file_is_a_config_error(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["stream", "hi", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "absent.yaml: file not found" in result.stderr


def test_config_check_accepts_a_good_file_and_names_the_path_of_a_bad_one(
    cli: CliRunner, fleet: str, tmp_path: Path
) -> None:
    ok = cli.invoke(app, ["config", "check", fleet])
    assert ok.exit_code == 0
    assert "ok — 1 providers, 2 deployments, 2 tasks" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(FAST_FLEET.replace("candidates: [fast, strong], prefer: latency",
                                      "candidates: [fast, strnog], prefer: latency"))
    result = cli.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml: tasks.chat.candidates[1]: unknown deployment 'strnog'" in result.stderr


@pytest.mark.parametrize(("yaml", "path"), [
    ("budgets:\n  - {scope: global, limit_usd: .inf}\n", "budgets[0].limit_usd"),
    ("budgets:\n  - {scope: global, limit_usd: .nan}\n", "budgets[0].limit_usd"),
    ("resilience:\n  timeouts: {total_s: .inf}\n", "resilience.timeouts.total_s"),
])
def test_config_check_refuses_non_finite_numbers(cli: CliRunner, tmp_path: Path, yaml: str,
                                                 path: str) -> None:
    # `limit_usd: .inf` once passed `config check`, then crashed `serve`.
    bad = tmp_path / "inf.yaml"
    bad.write_text(FAST_FLEET + yaml)
    result = cli.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2, result.stdout
    assert f"inf.yaml: {path}" in result.stderr and "finite" in result.stderr


def test_config_check_accepts_the_multi_provider_example_without_keys(cli: CliRunner,
                                                                     monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "CEREBRAS_API_KEY", "DEEPSEEK_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    example = Path(__file__).parents[2] / "config" / "examples" / "multi-provider.yaml"
    result = cli.invoke(app, ["config", "check", str(example)])
    assert result.exit_code == 0
    assert "5 providers, 8 deployments" in result.stdout
    assert "ANTHROPIC_API_KEY is not set" in result.stdout


def test_deployments_lists_prices_context_and_state(cli: CliRunner, fleet: str) -> None:
    result = cli.invoke(app, ["deployments", "--config", fleet])
    assert result.exit_code == 0
    out = result.stdout
    assert "fast" in out and "strong" in out
    assert "0.1 / - / 0.4" in out and "3 / - / 15" in out
    assert "200,000" in out
    assert "closed" in out
    assert "never observed" in out  # the live estimate column: priors until served


def test_real_process_bad_number_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "router.cli", "stream", "hi", "--max-cost-usd", "abc"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "Invalid value for '--max-cost-usd'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- papercuts (issue 15) -----------------------------------------------------------------

REASONING_FLEET = """
version: 1
providers:
  sim: {kind: simulated, options: {seed: 3}}
deployments:
  - {id: thinker, provider: sim, model: sim-pro, capabilities: [reasoning],
     price: {input_per_mtok: 0.1, output_per_mtok: 0.4},
     latency_prior: {ttft_ms: 100, tokens_per_s: 400},
     options: {output_tokens: 12, reasoning_tokens: 4, ttft_ms: 0}}
tasks:
  general: {candidates: [thinker]}
defaults: {task: general}
"""


def _write(tmp_path: Path, text: str, name: str = "router.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now: connections are refused


def _with_state(fleet: str, url: str) -> str:
    text = Path(fleet).read_text() + f'state: {{backend: redis, url: "{url}"}}\n'
    Path(fleet).write_text(text)
    return fleet


def test_reasoning_goes_to_stderr_apart_from_the_answer(cli: CliRunner, tmp_path: Path) -> None:
    config = _write(tmp_path, REASONING_FLEET)
    shown = cli.invoke(app, ["stream", "think first", "--config", config])
    assert shown.exit_code == 0, shown.stderr
    assert len(shown.stdout.split()) == 12  # the answer alone
    assert "step" not in shown.stdout
    first = shown.stderr.splitlines()[0]
    assert first.startswith("reasoning: step 1")  # its own line, before the summary
    hidden = cli.invoke(app, ["stream", "think first", "--config", config, "--no-reasoning"])
    assert hidden.exit_code == 0 and "reasoning:" not in hidden.stderr
    assert hidden.stdout == shown.stdout


def test_serve_without_the_server_extra_names_it(cli: CliRunner, fleet: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ModuleNotFoundError
    result = cli.invoke(app, ["serve", "--config", fleet])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: this needs the `server` extra (no module 'uvicorn'): "
        'pip install "llm-stream-router[server]"']


def test_redis_backend_without_the_redis_extra_names_it(cli: CliRunner, fleet: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = _with_state(fleet, f"redis://127.0.0.1:{_closed_port()}/0")
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    for args in (["stream", "hi"], ["spend"], ["config", "check", config]):
        result = cli.invoke(app, [*args, "--config", config] if args[0] != "config" else args)
        assert result.exit_code == 2, (args, result.stderr)
        assert 'pip install "llm-stream-router[redis]"' in result.stderr
        assert "Traceback" not in result.stderr


def test_unreachable_redis_is_one_line_and_config_check_reports_it(cli: CliRunner,
                                                                    fleet: str) -> None:
    url = f"redis://:s3cret@127.0.0.1:{_closed_port()}/0"
    config = _with_state(fleet, url)
    result = cli.invoke(app, ["spend", "--config", config])
    assert result.exit_code == 1, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "state store (Redis" in lines[0]
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    # state.on_unavailable: fail_open (the default) serves without Redis (issue 13).
    served = cli.invoke(app, ["stream", "hi", "--config", config])
    assert served.exit_code == 0, served.stderr
    assert "Traceback" not in served.stderr and "s3cret" not in served.stderr
    check = cli.invoke(app, ["config", "check", config])
    assert check.exit_code == 1
    assert "is unreachable" in check.stderr and "redis://***@127.0.0.1:" in check.stderr
    assert "s3cret" not in check.stdout + check.stderr


def test_config_check_reaches_a_live_redis(cli: CliRunner, fleet: str, redis_url: str) -> None:
    check = cli.invoke(app, ["config", "check", _with_state(fleet, redis_url)])
    assert check.exit_code == 0, check.stderr
    assert ": ok" in check.stdout


def test_missing_api_key_hint_names_the_variable(cli: CliRunner, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("H15A_UNSET_KEY", raising=False)
    config = _write(tmp_path, """
version: 1
providers:
  oa: {kind: openai, api_key_env: H15A_UNSET_KEY}
deployments:
  - {id: gpt, provider: oa, model: gpt-x, price: {input_per_mtok: 1, output_per_mtok: 1}}
tasks:
  general: {candidates: [gpt]}
defaults: {task: general}
""")
    result = cli.invoke(app, ["stream", "hi", "--config", config])
    assert result.exit_code == 1
    assert "hint: set H15A_UNSET_KEY (the provider's API key) in the environment" in result.stderr
    assert "relax" not in result.stderr


def test_route_json_is_the_route_event_with_rounded_costs(cli: CliRunner, fleet: str) -> None:
    result = cli.invoke(app, ["route", "Explain circuit breakers", "--config", fleet, "--json"])
    assert result.exit_code == 0, result.stderr
    ev = decode_event(result.stdout)
    assert ev.type == "route" and ev.deployment in ("fast", "strong")
    assert {c.deployment for c in ev.candidates} == {"fast", "strong"}
    for value in [ev.estimated_cost_usd, *(c.estimated_cost_usd for c in ev.candidates)]:
        assert value == round(value, 12)


def test_costs_are_rounded_for_display(cli: CliRunner, tmp_path: Path) -> None:
    # 3 input tokens at $0.1/Mtok is 3.0000000000000004e-07 in floating point.
    assert round(3 * 0.1 * 1e-6, 12) != 3 * 0.1 * 1e-6
    config = _write(tmp_path, FAST_FLEET.replace("output_tokens: 12", "output_tokens: 3"))
    result = cli.invoke(app, ["stream", "abc", "--config", config, "--json", "--model", "fast"])
    assert result.exit_code == 0
    for line in result.stdout.splitlines():
        _assert_usd_rounded(orjson.loads(line))
    assert "0000000000" not in result.stdout and "9999999999" not in result.stdout


def _assert_usd_rounded(data: object) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            if k.endswith("_usd") and isinstance(v, float):
                assert v == round(v, 12), (k, v)
            _assert_usd_rounded(v)
    elif isinstance(data, list):
        for v in data:
            _assert_usd_rounded(v)


def test_version_and_help_without_bool_placeholders(cli: CliRunner) -> None:
    version = cli.invoke(app, ["--version"])
    assert version.exit_code == 0
    assert version.stdout.strip() == f"llm-router {importlib.metadata.version('llm-stream-router')}"
    for command in (["stream"], ["route"], ["spend"], []):
        out = cli.invoke(app, [*command, "--help"]).stdout
        assert "--help" in out and "<bool>" not in out, command


def test_serve_on_all_interfaces_without_keys_exits_2(cli: CliRunner, fleet: str) -> None:
    result = cli.invoke(app, ["serve", "--config", fleet, "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in result.stderr


def test_serve_banner_says_whether_auth_is_on_and_where_the_playground_is(
    cli: CliRunner, fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from router.server.limits import DrainingServer

    served: list[dict[str, object]] = []
    # A real uvicorn.Config would configure this process's logging (caplog elsewhere).
    monkeypatch.setattr(uvicorn, "Config", lambda app, **kw: served.append(kw) or kw)
    monkeypatch.setattr(DrainingServer, "__init__", lambda self, config, drain: None)
    monkeypatch.setattr(DrainingServer, "run", lambda self, **kw: None)
    open_ = cli.invoke(app, ["serve", "--config", fleet, "--port", "8123"])
    assert open_.exit_code == 0, open_.stderr
    assert served[0]["port"] == 8123
    assert "auth off (no server.api_keys: loopback only)" in open_.stderr
    assert "playground http://127.0.0.1:8123/" in open_.stderr
    key = "0" * 64
    Path(fleet).write_text(Path(fleet).read_text()
                           + f"server: {{api_keys: [{{name: a, sha256: '{key}'}}]}}\n")
    keyed = cli.invoke(app, ["serve", "--config", fleet, "--port", "8124", "--host", "0.0.0.0"])
    assert keyed.exit_code == 0, keyed.stderr
    assert "on http://0.0.0.0:8124 · auth on (1 API key)" in keyed.stderr
