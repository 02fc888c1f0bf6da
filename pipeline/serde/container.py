"""The in-memory Avro object container file that polars reads telemetry bodies from.

polars reads Avro only from container files (magic, metadata with the schema, blocks of
records between sync markers) and panics on enums inside arrays, so the schemaless bodies of
a batch are wrapped into such a file, with a decoding schema that describes the same bytes
without enums or logical types.
"""

from __future__ import annotations

from typing import Any

from pipeline.serde.varint import string_piece, zigzag

SYNC = b"twinline-columns"  # any 16 bytes: the container is never written anywhere


def decoding_schema(schema: Any) -> Any:
    """The schema polars reads telemetry with: every enum (and every reference to one by
    name) an "int", no logical types, no docs. The bytes it describes are the same."""
    enums: set[str] = set()

    def collect(node: Any, namespace: str) -> None:
        if isinstance(node, dict):
            namespace = node.get("namespace", namespace)
            if node.get("type") == "enum":
                name = str(node["name"])
                enums.add(name)
                enums.add(name if "." in name else f"{namespace}.{name}")
            for value in node.values():
                collect(value, namespace)
        elif isinstance(node, list):
            for value in node:
                collect(value, namespace)

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "enum":
                return "int"
            return {
                key: rewrite(value) if key in ("type", "fields", "items", "values") else value
                for key, value in node.items()
                if key not in ("logicalType", "doc")
            }
        if isinstance(node, list):
            return [rewrite(value) for value in node]
        if isinstance(node, str) and node in enums:
            return "int"
        return node

    collect(schema, "")
    return rewrite(schema)


def container_header(schema_text: str) -> bytes:
    """An Avro object container file up to its first block: magic, metadata, sync marker."""
    meta = {"avro.schema": schema_text.encode(), "avro.codec": b"null"}
    entries = b"".join(string_piece(k) + zigzag(len(v)) + v for k, v in meta.items())
    return b"Obj\x01" + zigzag(len(meta)) + entries + zigzag(0) + SYNC


def container(header: bytes, bodies: list[bytes]) -> tuple[bytes, bytes]:
    """The container file holding `bodies` as its one block (after `container_header`),
    and the bodies joined."""
    blob = b"".join(bodies)
    return b"".join((header, zigzag(len(bodies)), zigzag(len(blob)), blob, SYNC)), blob
