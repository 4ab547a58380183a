"""``vsr-async --otel``: a command's traces and metrics, sent where OpenTelemetry's variables
say (``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``...).

Under ``opentelemetry-instrument``, which sets up the global providers itself, those are used
as they are; ``OTEL_SDK_DISABLED=true`` turns it off. Otherwise the SDK's providers are made
here: ``otlp`` (the default) sends to a collector over HTTP, ``console`` writes to stderr,
``none`` sends nothing. They are flushed and shut down when the command ends.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ._exits import ConfigError

if TYPE_CHECKING:
    from vsr_async import Hooks

#: Where the hooks of ``--otel`` are kept, in the root context's ``meta``.
HOOKS = "vsr_async.hooks"

_NEEDS = (
    "--otel needs OpenTelemetry's SDK: pip install 'vsr-async[cli,otel]' opentelemetry-sdk "
    "(and opentelemetry-exporter-otlp-proto-http to send to a collector)"
)


def enable(ctx: click.Context) -> None:
    """Make the command's clients report through OpenTelemetry (``make_client`` reads it)."""
    try:
        from opentelemetry import metrics, trace  # noqa: PLC0415 (the otel extra is optional)
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

        from vsr_async.otel import OpenTelemetryHooks  # noqa: PLC0415
    except ImportError:
        raise ConfigError(_NEEDS) from None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return  # as the SDK itself would: nothing recorded, nothing sent
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: vsr-async --otel sends http/protobuf"
        )
    tracer_provider: Any = trace.get_tracer_provider()
    meter_provider: Any = metrics.get_meter_provider()
    if not isinstance(tracer_provider, TracerProvider):  # not set up by opentelemetry-instrument
        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "vsr-async"}))
        tracer_provider = TracerProvider(resource=resource)
        for exporter in _exporters("OTEL_TRACES_EXPORTER"):
            from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        ctx.call_on_close(tracer_provider.shutdown)
    if not isinstance(meter_provider, MeterProvider):
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            PeriodicExportingMetricReader,
        )

        readers = [
            PeriodicExportingMetricReader(exporter)
            for exporter in _exporters("OTEL_METRICS_EXPORTER")
        ]
        meter_provider = MeterProvider(resource=tracer_provider.resource, metric_readers=readers)
        ctx.call_on_close(meter_provider.shutdown)
    hooks = OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider)
    ctx.find_root().meta[HOOKS] = hooks


def hooks() -> Hooks | None:
    """The hooks ``--otel`` made for this command, if it was given."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get(HOOKS)


#: For each variable, the console exporter (the SDK's) and the OTLP one (over HTTP).
_EXPORTERS = {
    "OTEL_TRACES_EXPORTER": (
        "opentelemetry.sdk.trace.export:ConsoleSpanExporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter:OTLPSpanExporter",
    ),
    "OTEL_METRICS_EXPORTER": (
        "opentelemetry.sdk.metrics.export:ConsoleMetricExporter",
        "opentelemetry.exporter.otlp.proto.http.metric_exporter:OTLPMetricExporter",
    ),
}


def _exporters(variable: str) -> list[Any]:
    """The exporters ``variable`` names (``otlp`` by default), made."""
    console, otlp = _EXPORTERS[variable]
    exporters = []
    for name in (n.strip() for n in os.environ.get(variable, "otlp").split(",")):
        if name == "console":
            exporters.append(_load(console)(out=sys.stderr))
        elif name == "otlp":
            exporters.append(_load(otlp)())
        elif name not in ("none", ""):
            raise ConfigError(f"{variable}={name!r}: vsr-async --otel knows otlp, console and none")
    return exporters


def _load(where: str) -> Any:
    module, _, name = where.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ConfigError(_NEEDS) from None
