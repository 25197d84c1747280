"""Tamper-evident records: signed, hash-chained, Merkle-batched, anchored, provable offline.

The pure core (no I/O, no clock):

- `record`: a record's canonical MessagePack body, its hash, signing and checking;
- `hashchain`: `StreamWriter` (next seq, link, sign) and `audit` (gap, reorder,
  duplicate, fork);
- `batch`: the Merkle tree over a batch's record hashes, paths, and `Batcher` (when a
  batch is due);
- `payload`: the ``OP_FALSE OP_RETURN`` anchor output;
- `proof`: the proof file and `verify_proof`; `headers`: trusted header chains;
- `receipt`: what a producer sends a buyer once a batch is mined.

The shells:

- `store`: the ``anchoring`` tables in the agent store;
- `service`: `Anchorer`, the Trio task that logs, batches, anchors and confirms;
- `kept`: `KeptRecords`, the tables' rows a buyer keeps (producers' records, receipts).
- `archive`: `BuyerArchive`, a data-feed buyer's kept records and their proofs.
- `cold`: archive files that old anchored records move to (`write_cold`), and
  `ColdArchive`, which still proves them.

`mesh proof` / `mesh verify` (agents/proof_cli.py) are the command line.
(docs/ARCHITECTURE.md §2, §7)
"""

from mesh.anchoring.archive import BuyerArchive, Kept
from mesh.anchoring.batch import BatchPolicy, batch_path, batch_root, root_from_path
from mesh.anchoring.cold import ColdArchive, ColdArchiveError, ColdBatch, ColdRecord, write_cold
from mesh.anchoring.errors import (
    REASONS,
    AnchoringError,
    HeadersError,
    NotAnchored,
    ProofFailed,
    ReceiptRejected,
    RecordError,
    RecordNotFound,
    RecordRejected,
)
from mesh.anchoring.hashchain import Finding, Head, StreamWriter, audit
from mesh.anchoring.headers import HeaderChain, export_headers, write_headers
from mesh.anchoring.payload import ANCHOR_TAG, AnchorPayload, find_anchor, parse_anchor_script
from mesh.anchoring.proof import Proof, Verified, load_proof, parse_proof, verify_proof
from mesh.anchoring.receipt import AnchorReceipt, ReceiptPath
from mesh.anchoring.record import Record, SignedRecord, decode_record, open_record, sign_record
from mesh.anchoring.schema import ANCHORING_SCHEMA
from mesh.anchoring.service import AnchorConfig, Anchorer, AnchorStatistics
from mesh.anchoring.store import AnchorStore, BatchInfo, StreamSummary

__all__ = [
    "ANCHORING_SCHEMA",
    "ANCHOR_TAG",
    "REASONS",
    "AnchorConfig",
    "AnchorPayload",
    "AnchorReceipt",
    "AnchorStatistics",
    "AnchorStore",
    "Anchorer",
    "AnchoringError",
    "BatchInfo",
    "BatchPolicy",
    "BuyerArchive",
    "ColdArchive",
    "ColdArchiveError",
    "ColdBatch",
    "ColdRecord",
    "Finding",
    "Head",
    "HeaderChain",
    "HeadersError",
    "Kept",
    "NotAnchored",
    "Proof",
    "ProofFailed",
    "ReceiptPath",
    "ReceiptRejected",
    "Record",
    "RecordError",
    "RecordNotFound",
    "RecordRejected",
    "SignedRecord",
    "StreamSummary",
    "StreamWriter",
    "Verified",
    "audit",
    "batch_path",
    "batch_root",
    "decode_record",
    "export_headers",
    "find_anchor",
    "load_proof",
    "open_record",
    "parse_anchor_script",
    "parse_proof",
    "root_from_path",
    "sign_record",
    "verify_proof",
    "write_cold",
    "write_headers",
]
