"""Drive the official Python MCP SDK (PyPI `mcp`) over Streamable HTTP, headless.

The end-to-end tests run this script as a real third-party MCP client. It connects to one
URL, negotiates (initialize by default), optionally lists tools, calls tools, and prints
exactly one JSON document on stdout:

    {
      "ok": true,
      "error": null,
      "protocol_version": "2025-11-25",
      "server_info": {"name": ..., "version": ...},
      "tools": [{"name": ..., "description": ..., "input_schema": {...}}, ...] | null,
      "calls": [
        {
          "name": "count", "arguments": {...},
          "is_error": false,
          "content": [{"type": "text", "text": "..."}],
          "structured_content": null,
          "error": null,
          "started_at": 0.0012, "finished_at": 1.503,
          "progress": [{"progress": 1.0, "total": 5.0, "message": "...", "at": 0.31}, ...]
        }
      ],
      "http_responses": [
        {"method": "POST", "url": "...", "status": 401, "content_type": "...",
         "www_authenticate": "Bearer ...", "at": 0.01}, ...
      ]
    }

Times (`started_at`, `finished_at`, `at`) are seconds on a monotonic clock since the
script connected, so a test can check that progress notifications arrived spread over
time rather than all at the end.

The exit status is 0 when every step succeeded (a tool result with isError still counts
as a success: the test decides), 1 otherwise; the JSON document is printed either way.

Authentication: `--header` adds static headers (e.g. `Authorization: Bearer ...`). OAuth
will plug in at `build_auth()`, which returns the httpx auth handler the SDK's
`OAuthClientProvider` provides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from typing import Any

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="MCP endpoint URL")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra HTTP header sent with every request (repeatable)",
    )
    parser.add_argument(
        "--mode",
        default="legacy",
        help="'legacy' (initialize handshake, the default), 'auto' (probe server/discover "
        "first) or a protocol version such as 2026-07-28 (stateless)",
    )
    parser.add_argument("--list-tools", action="store_true", help="list the server's tools")
    parser.add_argument(
        "--call",
        action="append",
        nargs=2,
        default=[],
        metavar=("TOOL", "JSON_ARGUMENTS"),
        help="call a tool with a JSON object of arguments (repeatable, in order)",
    )
    parser.add_argument(
        "--timeout-secs",
        type=float,
        default=60.0,
        help="give up on the whole session after this many seconds",
    )
    return parser.parse_args(argv)


def parse_headers(raw_headers: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in raw_headers:
        name, separator, value = raw.partition(":")
        if not separator or not name.strip():
            raise ValueError(f"--header must look like NAME:VALUE, got {raw!r}")
        headers[name.strip()] = value.strip()
    return headers


def build_auth(arguments: argparse.Namespace) -> httpx2.Auth | None:
    """The httpx auth handler for this run; None until OAuth support lands."""
    del arguments
    return None


def dump_model(model: Any) -> Any:
    """A pydantic model as plain JSON data (aliases, no unset fields)."""
    if model is None:
        return None
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def error_text(error: BaseException) -> str:
    """One readable line for an exception, unwrapping task-group exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(error_text(inner) for inner in error.exceptions)
    if isinstance(error, MCPError):
        return f"MCPError {error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


async def run(arguments: argparse.Namespace, report: dict[str, Any], clock_start: float) -> None:
    def now() -> float:
        return round(time.monotonic() - clock_start, 6)

    http_client = create_mcp_http_client(
        headers=parse_headers(arguments.header), auth=build_auth(arguments)
    )

    # The SDK turns an HTTP error into a generic MCP error; the tests need the status and
    # the challenge (401 + WWW-Authenticate), so every response is recorded as it arrives.
    async def record_response(response: httpx2.Response) -> None:
        report["http_responses"].append(
            {
                "method": response.request.method,
                "url": str(response.request.url),
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "www_authenticate": response.headers.get("www-authenticate"),
                "at": now(),
            }
        )

    http_client.event_hooks = {"response": [record_response]}
    async with http_client:
        transport = streamable_http_client(arguments.url, http_client=http_client)
        async with Client(transport, mode=arguments.mode, cache=None) as client:
            report["protocol_version"] = client.protocol_version
            report["server_info"] = dump_model(client.server_info)

            if arguments.list_tools:
                listed = await client.list_tools()
                report["tools"] = [
                    {
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                    }
                    for tool in listed.tools
                ]

            for tool_name, raw_arguments in arguments.call:
                tool_arguments = json.loads(raw_arguments)
                call: dict[str, Any] = {
                    "name": tool_name,
                    "arguments": tool_arguments,
                    "progress": [],
                    "error": None,
                }
                report["calls"].append(call)

                async def on_progress(
                    progress: float,
                    total: float | None,
                    message: str | None,
                    progress_list: list[dict[str, Any]] = call["progress"],
                ) -> None:
                    progress_list.append(
                        {"progress": progress, "total": total, "message": message, "at": now()}
                    )

                call["started_at"] = now()
                try:
                    result = await client.call_tool(
                        tool_name, tool_arguments, progress_callback=on_progress
                    )
                except Exception as error:  # reported, and the run fails
                    call["finished_at"] = now()
                    call["error"] = error_text(error)
                    raise
                call["finished_at"] = now()
                call["is_error"] = bool(result.is_error)
                call["content"] = [dump_model(block) for block in result.content]
                call["structured_content"] = result.structured_content


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    report: dict[str, Any] = {
        "ok": False,
        "error": None,
        "protocol_version": None,
        "server_info": None,
        "tools": None,
        "calls": [],
        "http_responses": [],
    }
    clock_start = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(arguments, report, clock_start), arguments.timeout_secs))
        report["ok"] = True
    except BaseException as error:  # noqa: BLE001 - every failure goes into the report
        if isinstance(error, KeyboardInterrupt):
            raise
        report["error"] = error_text(error)
        traceback.print_exc(file=sys.stderr)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
