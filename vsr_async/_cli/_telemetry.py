"""``vsr-async --otel``: a command's traces and metrics, sent where OpenTelemetry's variables
say (``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``...).

Under ``opentelemetry-instrument``, which sets up the global providers itself, those are used
as they are; ``OTEL_SDK_DISABLED=true`` turns it off. Otherwise the SDK's providers are made
here: ``otlp`` (the default) sends to a collector over HTTP, ``console`` writes to stderr,
``none`` sends nothing. They are flushed and shut down when the command ends.
"""

from __future__ import annotations

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
        for exporter in _exporters("OTEL_TRACES_EXPORTER", _span_exporter):
            from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        ctx.call_on_close(tracer_provider.shutdown)
    if not isinstance(meter_provider, MeterProvider):
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            PeriodicExportingMetricReader,
        )

        readers = [
            PeriodicExportingMetricReader(exporter)
            for exporter in _exporters("OTEL_METRICS_EXPORTER", _metric_exporter)
        ]
        meter_provider = MeterProvider(resource=tracer_provider.resource, metric_readers=readers)
        ctx.call_on_close(meter_provider.shutdown)
    hooks = OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider)
    ctx.find_root().meta[HOOKS] = hooks


def hooks() -> Hooks | None:
    """The hooks ``--otel`` made for this command, if it was given."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get(HOOKS)


def _exporters(variable: str, make: Any) -> list[Any]:
    names = [n.strip() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    return [make(name, variable) for name in names if name != "none"]


def _span_exporter(name: str, variable: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter(out=sys.stderr)
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(_NEEDS) from None
        return OTLPSpanExporter()
    raise ConfigError(f"{variable}={name!r}: vsr-async --otel knows otlp, console and none")


def _metric_exporter(name: str, variable: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415

        return ConsoleMetricExporter(out=sys.stderr)
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter,
            )
        except ImportError:
            raise ConfigError(_NEEDS) from None
        return OTLPMetricExporter()
    raise ConfigError(f"{variable}={name!r}: vsr-async --otel knows otlp, console and none")
