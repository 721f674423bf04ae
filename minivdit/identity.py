"""Content identity of a model folder: which weights made a cache, checked without loading the model.

A cache (VAE latents, teacher features, text tokens) is only valid for the network that wrote it, and folder
names say nothing about that: every run of ``recipes/vae_causal3d.py`` exports to a folder named ``vae``, and
one VAE can be spelled ``runs/x`` or ``runs/x/vae``. :func:`folder_identity` describes a folder by content:

- ``config_sha256``: sha256 of its ``config.json`` (keys sorted), without the keys that name the library
  version or the folder it was saved from (``VOLATILE_CONFIG_KEYS``): re-saving the same model elsewhere, or
  with another transformers/diffusers release, keeps the identity;
- ``weights_sha256``: sha256 over every weight file (``WEIGHT_SUFFIXES``, sorted by name) of its name, its
  size, its safetensors header (tensor names, dtypes, shapes, offsets) and 16 evenly spaced 4 KiB blocks
  (the whole file when smaller than 64 KiB).

Sampled blocks rather than a full hash, a deliberate choice: the check runs at every training start on every
rank, for folders of 0.3 GB (SD-VAE), 0.9 GB (CogVideoX VAE), 1.2 GB (V-JEPA 2-L) or 9.5 GB (T5-XXL), often on
network storage where a full hash takes seconds to minutes; the sampled one reads 64 KiB per file. Two
weight files of the same architecture but other values (another training run, a fine-tune, another EMA)
differ in every block, so it tells them apart; what it cannot see is an edit confined to bytes between the
sampled blocks, which no training run produces. ``minivdit.conditioning.text.text_identity`` uses the same
functions, so its hashes are those of the caches made before this module existed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path

VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "_diffusers_version")
"""``config.json`` keys left out of ``config_sha256``: the saving library's version and the saved path."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""Files of a folder hashed into ``weights_sha256``."""
SAMPLED_BLOCKS, BLOCK_BYTES = 16, 4096


def sha(chunks: Sequence[bytes]) -> str:
    """sha256 of length-prefixed chunks (so that ``[b"ab", b"c"]`` and ``[b"a", b"bc"]`` differ)."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets); ValueError naming the file
    when it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header of {n} bytes)")
        return f.read(n)


def sampled_blocks(path: Path, blocks: int = SAMPLED_BLOCKS, size: int = BLOCK_BYTES) -> list[bytes]:
    """``blocks`` evenly spaced ``size``-byte blocks of a file (all of it when small): weights of the same
    architecture but other values differ there, for the cost of a few random reads."""
    total = path.stat().st_size
    with open(path, "rb") as f:
        if total <= blocks * size:
            return [f.read()]
        out = []
        for k in range(blocks):
            f.seek((total - size) * k // (blocks - 1))
            out.append(f.read(size))
        return out


def config_sha256(config: dict) -> str:
    """sha256 of a ``config.json`` dict without ``VOLATILE_CONFIG_KEYS``."""
    stable = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
    return sha([json.dumps(stable, sort_keys=True).encode()])


def weight_files(folder: Path) -> list[Path]:
    """The weight files of ``folder`` (``WEIGHT_SUFFIXES``), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_sha256(files: Sequence[Path]) -> str:
    """sha256 of each file's name, size, safetensors header and sampled blocks (module docstring)."""
    chunks = []
    for p in files:
        chunks += [p.name.encode(), str(p.stat().st_size).encode()]
        if p.suffix == ".safetensors":
            chunks.append(safetensors_header(p))
        chunks += sampled_blocks(p)
    return sha(chunks)


def folder_identity(folder: str | Path, what: str) -> dict:
    """``{"folder", "config_sha256", "weights_sha256"}`` of a model folder (``folder`` is recorded resolved
    and absolute, for messages only: the hashes are the identity). ``what`` names the folder's role in the
    ValueError raised when it has no config.json or no weight files (``"--vae.path"``, ...)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {folder}: cannot read {config_file.name} ({e})") from e
    files = weight_files(folder) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{what} {folder}: no weight files ({' / '.join(WEIGHT_SUFFIXES)}) in it")
    return {
        "folder": str(folder.resolve()),
        "config_sha256": config_sha256(config),
        "weights_sha256": weights_sha256(files),
    }


IDENTITY_KEYS = ("config_sha256", "weights_sha256")
"""The keys of a :func:`folder_identity` that are compared (the folder is not: folders move)."""


def identity_diff(a: dict, b: dict) -> list[str]:
    """The ``IDENTITY_KEYS`` on which two identities differ, as ``["config", "weights"]`` (empty: same)."""
    return [k.removesuffix("_sha256") for k in IDENTITY_KEYS if a.get(k) != b.get(k)]


__all__ = [
    "IDENTITY_KEYS",
    "VOLATILE_CONFIG_KEYS",
    "WEIGHT_SUFFIXES",
    "config_sha256",
    "folder_identity",
    "identity_diff",
    "safetensors_header",
    "sampled_blocks",
    "sha",
    "weight_files",
    "weights_sha256",
]
