"""Aborting an RPC with a readable message and machine-readable details.

An ``INVALID_ARGUMENT`` carries, beside its message (``"k: must be in [1, 1000],
got 0"``), a ``google.rpc.BadRequest`` with one field violation per faulty field
in the status details (``grpc-status-details-bin``), so clients can point at the
field without parsing the text; clients that ignore details see the same code
and message as before::

    from grpc_status import rpc_status
    status = rpc_status.from_call(error)          # error: a grpc.RpcError
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


def bad_request_status(
    message: str, violations: Sequence[tuple[str, str]]
) -> grpc.Status:
    """An INVALID_ARGUMENT ``grpc.Status`` with ``message`` and a ``BadRequest``
    listing ``(field, description)`` violations."""
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message)
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        for field, description in violations
    ]))
    return rpc_status.to_status(status)


def abort_invalid(context: grpc.ServicerContext, field: str, description: str) -> NoReturn:
    """Abort with INVALID_ARGUMENT, message ``"{field}: {description}"`` and the
    matching ``BadRequest`` detail."""
    context.abort_with_status(bad_request_status(f"{field}: {description}", [(field, description)]))
    raise AssertionError("abort_with_status returned")  # pragma: no cover
