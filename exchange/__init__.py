"""The exchange contract: the only thing the Response and Request Networks share.

Both sides import this package and nothing else of each other. It defines how an export file is
named, laid out, signed, written and read. See ``docs/exchange-format.md`` for the format itself.
"""

from exchange.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ChangeRecord,
    ExportHeader,
    FileName,
    parse_file_name,
)
from exchange.reader import ExportFile, RejectedFile, RejectReason, read_export
from exchange.signing import Keyring, Signer, key_id_for
from exchange.writer import PublishedFile, publish_export

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ChangeRecord",
    "ExportFile",
    "ExportHeader",
    "FileName",
    "Keyring",
    "PublishedFile",
    "RejectReason",
    "RejectedFile",
    "Signer",
    "key_id_for",
    "parse_file_name",
    "publish_export",
    "read_export",
]
