"""Signed audit checkpoints at their documented path (docs/checkpoints.md): defined in
:mod:`writ.evidence.checkpoint`."""

from writ.evidence.checkpoint import Checkpoint as Checkpoint
from writ.evidence.checkpoint import Checkpointer as Checkpointer
from writ.evidence.checkpoint import CheckpointError as CheckpointError
from writ.evidence.checkpoint import Outcome as Outcome
from writ.evidence.checkpoint import check_all as check_all
from writ.evidence.checkpoint import generate_key as generate_key
from writ.evidence.checkpoint import key_id as key_id
from writ.evidence.checkpoint import latest_in as latest_in
from writ.evidence.checkpoint import load_private_key as load_private_key
from writ.evidence.checkpoint import load_public_key as load_public_key
from writ.evidence.checkpoint import make as make
from writ.evidence.checkpoint import raw_public as raw_public
from writ.evidence.checkpoint import read_checkpoint as read_checkpoint
from writ.evidence.checkpoint import sign as sign
from writ.evidence.checkpoint import verify_store as verify_store
from writ.evidence.checkpoint import write_checkpoint as write_checkpoint
from writ.evidence.checkpoint import write_key as write_key

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "Outcome",
    "check_all",
    "generate_key",
    "key_id",
    "latest_in",
    "load_private_key",
    "load_public_key",
    "make",
    "raw_public",
    "read_checkpoint",
    "sign",
    "verify_store",
    "write_checkpoint",
    "write_key",
]
