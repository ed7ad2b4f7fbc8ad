"""The `llm-router` CLI: output where a user looks for it, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
        (["stream", "hi", "--prefer", "cheap"], "prefer: 'cheap' is not one of"),
        (["stream", "hi", "--max-tokens", "0"], "max_tokens: expected a positive number"),
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
