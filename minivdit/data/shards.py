"""Webdataset-format tar shards of clips, cached VAE latents and teacher features: write, index, read.

Made by ``tools/make_shards.py`` (clips) and ``tools/cache_latents.py`` (latents / features); read by the
``"shards"`` dataset (``--data.dataset shards --data.root DIR``) or streamed with :func:`iter_shards`.

Format. A shard folder holds::

    meta.json             what the shards hold (below); written first, "complete": true once all are done
    shard-000000.tar      plain, uncompressed tars: `tar tvf` lists them, `webdataset.WebDataset` reads them
    shard-000001.tar      ...
    index.json            byte offsets of every member (made and kept up to date by ShardDataset)

A sample is the group of consecutive members ``<key>.<member>`` sharing a key (webdataset's convention); the
key is the source index, zero-padded (``000001234``), with ``_r<k>`` for repeat k > 0 (``--repeats``):

=============  =========================================================================================
member         content
=============  =========================================================================================
video.npy      uint8 ``[F, 3, H, W]`` (``np.save``), pixel ``p`` stands for ``p / 127.5 - 1``
video.mp4      or the clip re-encoded (H.264 yuv420p at ``crf``, MPEG-4 part 2 without libx264); odd sides
               are padded by edge repetition and cropped back on read
label.cls      the class index as ASCII decimal (0 for unconditional datasets)
caption.txt    UTF-8 caption (only when the source dataset gives captions)
latents.npy    ``[F', C, h, w]`` already scaled by the VAE, ``float32`` / ``float16`` / ``bfloat16``: the
               posterior mean of the scaled latents (or one frozen draw: meta.json's ``latent_posterior``)
latents_logvar.npy  ``[F', C, h, w]`` log-variance of the scaled latents' posterior (raw logvar + 2·log s),
               with ``latent_posterior: "moments"``: ``get`` then draws a fresh sample (below)
feats.npy      ``[F', N', ΣD]`` teacher features (``Teacher.forward``: raw tokens, meta.json's
               ``teacher.features`` says ``"raw"``), ``bfloat16`` / ``float16`` / ``float32``
text.npy       ``[L, Dt]`` text-encoder tokens of the caption (``tools/cache_text.py``), ``bfloat16`` by
               default; the loader serves them as ``"text"`` and ``collate`` fills ``Batch.text``
text_mask.npy  ``[L]`` bool, True = real token; only for encoders run with a mask (not CogVideoX's T5)
image_latents.npy  ``[1, C, h, w]`` the clip's frame 0 VAE-encoded alone (posterior mean, scaled), clean or
               with CogVideoX's pixel noise drawn once per clip: the I2V / FlashI2V condition
               (``tools/cache_latents.py --start-frame``; meta.json's ``start_frame`` says which)
=============  =========================================================================================

numpy has no bfloat16: a ``bfloat16`` array is stored as ``uint16`` holding the raw bf16 bits (the npy header
says ``<u2``); meta.json says which. Read it back with ``torch.from_numpy(a).view(torch.bfloat16)``.

meta.json: ``format`` ("minivdit-shards"), ``version`` (1), ``fields`` (per field: ``member``, ``dtype``,
``shape``, and ``crf``/``fps`` for mp4), ``num_samples``, ``samples_per_shard``, ``repeats``,
``source_size``, ``shards`` ([{name, count}]), ``num_classes``, ``class_names``, ``source`` (the DataConfig
that produced the clips, loader-only fields dropped), ``vae`` and ``teacher`` (configs that made the caches,
plus the VAE's compression and ``identity`` (``minivdit.models.vae.vae_identity``: kind, hashes of its
config and weights), the teacher's ``names``/``dims``/``grid`` and ``identity`` (per encoder, the same
hashes: ``minivdit.align.teachers.teacher_identity``), or null; a run refuses caches made by other weights:
:func:`cache_mismatches`), ``seed``, ``made_by`` and
``complete``; with cached text also ``text_encoder``: the encoder's identity
(``minivdit.conditioning.text.text_identity``: class, hashes of its config, weight headers and tokenizer,
``max_length``, ``use_mask``, dtype) plus ``null``, the folder file holding the empty-prompt tokens
(``text_null.npy`` ``[L, Dt]``, and ``text_null_mask.npy``), read with :meth:`ShardDataset.text_null`.
A run refuses text cached by another encoder: :func:`text_cache_mismatch`.

Latent posterior (``latent_posterior`` in meta.json, :func:`latent_posterior`). ``"moments"``
(``tools/cache_latents.py``'s default): ``latents.npy`` holds the mean and ``latents_logvar.npy`` the
log-variance of the scaled latents, and ``get(index, rng)`` returns ``latents = mean + exp(logvar / 2)·ε``
with ε ~ N(0, I) drawn from ``rng``: the loader's generator of ``(seed, epoch, index)`` (``minivdit.data``),
so every visit of a clip sees a fresh posterior sample, as diffusers' and finetrainers' cached-moment training
does (``DiagonalGaussianDistribution(moments).sample()`` each step), and a resumed run draws the same samples
as an uninterrupted one, whatever the worker count. ``get(index)`` without an rng returns the mean.
``"mean"`` / ``"sample"``: the latents are the posterior mean, or one posterior draw frozen at caching time,
used as they are every epoch (a deterministic encoder; REPA's and Latte's per-step sampling is lost).
Caches written before the stamp are read as ``"sample"`` when their ``vae.sample_posterior`` is true, else
``"mean"``, with one warning naming the rebuild command; an unknown stamp, or ``"moments"`` without its
log-variance, is refused.

Adding members. :func:`extend_shards` adds members to every sample of a finished folder in place (each shard
rewritten to ``.tmp`` and renamed; resumable, since a shard already holding the members is skipped):
``tools/cache_text.py`` adds ``text.npy`` this way to shards of clips or latents.

Writing. :class:`ShardWriter` writes ``shard-NNNNNN.tar.tmp`` and renames it when the shard is whole, so an
interrupted run leaves no half shard; :func:`prepare_shards` makes a rerun skip the shards that exist and
refuses to mix shards of different settings in one folder.

Reading: a deliberate deviation from webdataset. webdataset streams shards and shuffles within a buffer;
``ShardDataset`` instead indexes every member's byte range once (``index.json``, rebuilt for a shard whose
size or mtime changed) and serves ``get(index, rng)`` by seeking in the tar: a *map-style* dataset. The
loader's resumable sampler (``minivdit/data/__init__.py``) then gives a full shuffle of every epoch, disjoint
ranks, any number of workers and an exact resume position saved in checkpoints, which streaming with a
shuffle buffer cannot (its order depends on the worker count and its position is lost at a restart). The
price is random reads, cheap on local disks and NFS; for object stores use :func:`iter_shards`, the
``webdataset`` pipeline (shards split over ranks and workers, buffer shuffle, no exact resume).

Shards hold clips at their final size, decoded and augmented once when written: ``get`` ignores ``rng``, so
every epoch sees the same crop/flip of a clip (``--repeats K`` stores K augmentations of each source clip).

Buckets (``minivdit/data/buckets.py``). Shards made with ``--data.buckets.sizes`` hold every clip at its
bucket's size, so clips and cached latents of several sizes share one folder. meta.json then has
``buckets``: ``sizes`` (``["49x480x720", ...]``, a bucket's id is its position), ``of_source`` (the bucket id
of every source clip; a sample's source is the number its key starts with, its repeats share the bucket) and
``shapes`` (per bucket, the shape of each size-dependent field: ``video``, ``latents``, ``latents_logvar``);
those fields' ``shape`` in ``fields`` is null (:func:`sample_fields` gives a sample's). ``ShardDataset``
exposes ``buckets`` and ``bucket_of`` for the loader, which batches by bucket; a run must list the same
buckets (``--data.buckets.sizes``). Folders without ``buckets`` read as before.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from minivdit import durable

log = logging.getLogger("minivdit")

FORMAT, VERSION = "minivdit-shards", 1
META, INDEX = "meta.json", "index.json"
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
MEMBERS = {"video": ("video.npy", "video.mp4"), "label": ("label.cls",), "caption": ("caption.txt",)}
MEMBERS |= {"latents": ("latents.npy",), "feats": ("feats.npy",)}
MEMBERS |= {"latents_logvar": ("latents_logvar.npy",)}
MEMBERS |= {"text": ("text.npy",), "text_mask": ("text_mask.npy",)}
MEMBERS |= {"image_latents": ("image_latents.npy",)}
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPTIONAL_FIELDS = (
    "video",
    "caption",
    "latents",
    "latents_logvar",
    "image_latents",
    "feats",
    "text",
    "text_mask",
)
LATENT_POSTERIORS = ("moments", "mean", "sample")
"""meta.json's ``latent_posterior`` (module docstring)."""
REBUILD_LATENTS = "python tools/cache_latents.py <the same --data.* / --vae.* flags> --out DIR --overwrite"
"""The command that re-caches latents as moments (named in the warnings and errors about old caches)."""
# DataConfig fields that change how clips are batched, not what they are: ignored when comparing settings.
LOADER_FIELDS = ("batch_size", "num_workers", "drop_last", "shard_fields", "_type")


_KEY_SOURCE = re.compile(r"(\d+)(?:_r\d+)?$")


def key_source(key: str) -> int:
    """The source index a sample key starts with (``000001234_r2`` → 1234)."""
    m = _KEY_SOURCE.search(key.rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"sample key {key!r} does not name a source clip (expected digits, then _r<k>)")
    return int(m.group(1))


def sample_fields(meta: Mapping, key: str) -> dict[str, dict]:
    """meta.json's ``fields`` as they apply to sample ``key``: with buckets, the shapes of its bucket
    (module docstring, "Buckets"); the stored ``fields`` otherwise."""
    info = meta.get("buckets")
    if not info:
        return dict(meta["fields"])
    source = key_source(key)
    if not 0 <= source < len(info["of_source"]):
        raise ValueError(f"sample {key!r}: source {source} beyond the {len(info['of_source'])} of meta.json")
    shapes = info["shapes"][info["of_source"][source]]
    return {n: spec | {"shape": shapes[n]} if n in shapes else spec for n, spec in meta["fields"].items()}


def bucket_meta(dataset, size: int, shapes: Callable[[Sequence[int]], Mapping[str, Sequence[int]]]) -> dict:
    """meta.json's ``buckets`` for the first ``size`` clips of the bucketed ``dataset`` (``sizes``,
    ``of_source``, and ``shapes(bucket)`` for each bucket: ``{field: shape}``)."""
    return {
        "sizes": [str(b) for b in dataset.buckets],
        "of_source": [int(b) for b in dataset.bucket_of[:size]],
        "shapes": [{k: [int(x) for x in v] for k, v in shapes(b).items()} for b in dataset.buckets],
    }


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def sample_key(source_index: int, repeat: int = 0) -> str:
    """Key of source clip ``source_index`` in repeat ``repeat`` (no dots: webdataset splits on them)."""
    return f"{source_index:09d}" + (f"_r{repeat}" if repeat else "")


# ---------------------------------------------------------------------------------------------- encoding


def to_uint8_clip(video: Tensor | np.ndarray) -> np.ndarray:
    """``[F, 3, H, W]`` float in [-1, 1] (or uint8) -> uint8 numpy ``[F, 3, H, W]`` (rounded, clipped)."""
    if isinstance(video, Tensor):
        video = video.detach().cpu().numpy()
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"a clip must be [F, 3, H, W], got shape {tuple(video.shape)}")
    if video.dtype == np.uint8:
        return np.ascontiguousarray(video)
    return np.clip((video.astype(np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _tensor_npy(t: Tensor, dtype: str) -> bytes:
    t = torch.as_tensor(t).detach().to("cpu", FLOAT_DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        return _npy_bytes(t.view(torch.int16).numpy().view(np.uint16))  # raw bf16 bits
    return _npy_bytes(t.numpy())


def encode_mp4(frames: np.ndarray, *, crf: int = 18, fps: int = 8) -> bytes:
    """uint8 ``[F, 3, H, W]`` -> mp4 bytes (H.264 yuv420p at ``crf``; MPEG-4 part 2 if no libx264)."""
    import av

    frames = np.ascontiguousarray(frames.transpose(0, 2, 3, 1))  # [F, H, W, 3]
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p needs even sides
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    try:
        av.Codec("libx264", "w")
        codec, options = "libx264", {"crf": str(crf), "preset": "medium"}
    except Exception:  # PyAV builds without GPL codecs; the exception type varies across versions
        codec, options = "mpeg4", {"qscale": "2"}
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush
    return buf.getvalue()


def decode_mp4(data: bytes, shape: Sequence[int], where: str = "mp4") -> np.ndarray:
    """mp4 bytes -> uint8 ``[F, 3, H, W]`` of ``shape`` (padding cropped); ValueError naming ``where``."""
    import av

    F, _, H, W = shape
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.FFmpegError, IndexError) as e:
        raise ValueError(f"{where}: cannot decode the mp4 ({e})") from e
    if len(frames) != F:
        raise ValueError(f"{where}: decoded {len(frames)} frames, meta.json says {F}")
    return np.stack(frames)[:, :H, :W].transpose(0, 3, 1, 2)  # [F, 3, H, W]


def encode_sample(sample: Mapping, fields: Mapping[str, dict]) -> dict[str, bytes]:
    """A sample ``{"video"?, "label", "caption"?, "latents"?, "feats"?, "text"?, "text_mask"?}`` ->
    ``{member: bytes}`` for the fields of ``fields`` (meta.json's ``fields``), checking each shape."""
    out = {}
    for name, spec in fields.items():
        if name == "label":
            out[spec["member"]] = str(int(sample.get("label", 0))).encode()
            continue
        if sample.get(name) is None:
            raise ValueError(f"sample has no {name!r} but the shards store it (fields {sorted(fields)})")
        value = sample[name]
        if name == "caption":
            out[spec["member"]] = str(value).encode("utf-8")
            continue
        if tuple(value.shape) != tuple(spec["shape"]):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, the shards store {tuple(spec['shape'])}"
            )
        if name == "video":
            clip = to_uint8_clip(value)
            data = _npy_bytes(clip) if spec["member"] == "video.npy" else encode_mp4(clip, **_mp4_opts(spec))
        elif spec["dtype"] == "bool":
            data = _npy_bytes(torch.as_tensor(value).detach().cpu().bool().numpy())
        else:
            data = _tensor_npy(value, spec["dtype"])
        out[spec["member"]] = data
    return out


def _mp4_opts(spec: dict) -> dict:
    return {"crf": spec.get("crf", 18), "fps": spec.get("fps", 8)}


def _load_npy(data: bytes, spec: dict, where: str) -> np.ndarray:
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / EOFError / OSError for broken files
        raise ValueError(f"{where}: not a valid .npy ({e})") from e
    stored = "uint16" if spec["dtype"] == "bfloat16" else spec["dtype"]
    if a.dtype != np.dtype(stored) or tuple(a.shape) != tuple(spec["shape"]):
        raise ValueError(
            f"{where}: {a.dtype} {tuple(a.shape)}, meta.json says {spec['dtype']} {tuple(spec['shape'])}"
        )
    return a


def decode_member(name: str, data: bytes, spec: dict, where: str):
    """One member's bytes -> its value as ``get`` returns it: video float32 ``[F, 3, H, W]`` in [-1, 1],
    label int, caption str, latents float32 tensor, feats and text tensors in the stored dtype (``train_step``
    and ``batch_cond`` upcast), text_mask bool tensor."""
    if name == "label":
        try:
            return int(data.decode("ascii").strip())
        except ValueError as e:
            raise ValueError(f"{where}: label is not an integer: {data[:32]!r}") from e
    if name == "caption":
        return data.decode("utf-8")
    if name == "video":
        clip = (
            _load_npy(data, spec, where)
            if spec["member"] == "video.npy"
            else decode_mp4(data, spec["shape"], where)
        )
        return torch.from_numpy(np.ascontiguousarray(clip)).float().div_(127.5).sub_(1.0)
    a = torch.from_numpy(_load_npy(data, spec, where).copy())
    if spec["dtype"] == "bfloat16":
        a = a.view(torch.bfloat16)
    return a.float() if name in ("latents", "image_latents") else a


# ---------------------------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes one tar shard atomically: members go to ``<path>.tmp``, which is flushed, fsynced and renamed to
    ``<path>`` by ``close()``. Used as a context manager, an exception removes the ``.tmp``; a killed process
    leaves only a ``.tmp`` (removed by the next :func:`prepare_shards`), never a partial ``<path>``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        # Both stay open across write() calls: closed by close() / abort().
        self._file = open(self.tmp, "wb")  # noqa: SIM115
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._keys: set[str] = set()
        self.count = 0

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Add one sample: ``<key>.<member>`` for each ``member`` (``"video.npy"``, ``"label.cls"``, ...)."""
        if not key or "." in key or "/" in key:
            raise ValueError(
                f"sample key {key!r} must be non-empty without '.' or '/' (webdataset splits on them)"
            )
        if key in self._keys:
            raise ValueError(f"{self.path.name}: duplicate sample key {key!r}")
        self._keys.add(key)
        for member, data in members.items():
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0  # fixed mtime: reproducible shards
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> Path:
        self._tar.close()
        self._file.close()
        durable.publish(self.tmp, self.path)  # fsync, rename, fsync the folder
        return self.path

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def plan_shards(num_samples: int, samples_per_shard: int) -> list[range]:
    """Global sample positions of each shard: consecutive blocks of ``samples_per_shard`` (the last may be
    shorter)."""
    if num_samples < 1 or samples_per_shard < 1:
        raise ValueError(
            f"need num_samples >= 1 and samples_per_shard >= 1, got {num_samples}, {samples_per_shard}"
        )
    n = math.ceil(num_samples / samples_per_shard)
    return [range(i * samples_per_shard, min(num_samples, (i + 1) * samples_per_shard)) for i in range(n)]


def source_of(position: int, source_size: int) -> tuple[int, int]:
    """(source index, repeat) of global sample ``position``: repeat k covers positions [k·n, (k+1)·n)."""
    return position % source_size, position // source_size


def make_meta(
    *,
    fields: dict[str, dict],
    source_size: int,
    samples_per_shard: int,
    repeats: int = 1,
    **extra,
) -> dict:
    """meta.json for ``source_size × repeats`` samples in shards of ``samples_per_shard`` (module docstring);
    ``extra`` adds keys (``source``, ``vae``, ``teacher``, ``num_classes``, ``seed``, ``made_by``, ...)."""
    if "label" not in fields:
        raise ValueError(f"fields must include 'label', got {sorted(fields)}")
    for name, spec in fields.items():
        if name not in MEMBERS or spec.get("member") not in MEMBERS[name]:
            raise ValueError(f"field {name!r} with member {spec.get('member')!r}: expected one of {MEMBERS}")
    total = source_size * repeats
    shards = [
        {"name": shard_name(i), "count": len(r)} for i, r in enumerate(plan_shards(total, samples_per_shard))
    ]
    meta = {"format": FORMAT, "version": VERSION, "fields": fields, "num_samples": total}
    meta |= {"samples_per_shard": samples_per_shard, "repeats": repeats, "source_size": source_size}
    return meta | extra | {"shards": shards, "complete": False}


def _atomic_write_json(path: Path, obj) -> None:
    durable.write_text(path, json.dumps(obj, indent=1))


def _plan_part(meta: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in meta.items() if k not in ("complete", "made_by")}))


def prepare_shards(root: str | Path, meta: dict, *, overwrite: bool = False) -> list[int]:
    """Start or resume writing ``meta``'s shards in ``root``: writes meta.json (``complete: false``), removes
    leftover ``.tmp`` files of an interrupted run, and returns the shard numbers still to write. A folder
    holding shards of other settings raises ``ValueError`` (naming the differing keys) unless ``overwrite``,
    which deletes its shards first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        new_plan, old_plan = _plan_part(meta), _plan_part(old)
        if new_plan != old_plan:
            if not overwrite:
                keys = sorted(
                    k for k in new_plan.keys() | old_plan.keys() if new_plan.get(k) != old_plan.get(k)
                )
                raise ValueError(
                    f"{root} already holds shards made with other settings (differing meta.json keys: "
                    f"{keys}); use another folder or --overwrite"
                )
            for p in root.iterdir():
                if SHARD_RE.match(p.name) or p.name == INDEX:
                    p.unlink()
    elif any(SHARD_RE.match(p.name) for p in root.iterdir()):
        raise ValueError(
            f"{root} holds shard-*.tar files but no {META}: not shards of this tool; use another folder"
        )
    for p in root.glob("shard-*.tar.tmp"):
        p.unlink()
    _atomic_write_json(meta_path, {**meta, "complete": False})
    return [i for i, s in enumerate(meta["shards"]) if not (root / s["name"]).is_file()]


def finish_shards(root: str | Path, meta: dict) -> None:
    """Mark the folder complete once every shard of ``meta`` exists (ValueError naming the missing ones)."""
    root = Path(root)
    missing = [s["name"] for s in meta["shards"] if not (root / s["name"]).is_file()]
    if missing:
        raise ValueError(f"{root}: {len(missing)} shards missing: {missing[:5]}")
    _atomic_write_json(root / META, {**meta, "complete": True})


def write_shard(root: str | Path, shard: int, meta: dict, samples: Iterable[tuple[str, Mapping]]) -> Path:
    """Write shard number ``shard`` of ``meta`` from ``(key, sample)`` pairs (``encode_sample`` each)."""
    spec = meta["shards"][shard]
    with ShardWriter(Path(root) / spec["name"]) as writer:
        for key, sample in samples:
            if meta.get("buckets") and sample.get("bucket") is not None:
                planned = meta["buckets"]["of_source"][key_source(key)]
                if sample["bucket"] != planned:
                    raise ValueError(
                        f"sample {key!r} is of bucket {sample['bucket']}, meta.json says {planned}"
                    )
            writer.write(key, encode_sample(sample, sample_fields(meta, key)))
        if writer.count != spec["count"]:
            raise ValueError(f"{spec['name']}: wrote {writer.count} samples, the plan says {spec['count']}")
    return writer.path


def _has_members(path: Path, members: Sequence[str]) -> bool:
    try:
        index_shard(path, members)
    except ValueError:
        return False
    return True


def _extend_shard(
    path: Path,
    count: int,
    stored: Mapping[str, dict],
    new: Mapping[str, dict],
    inputs: Sequence[str],
    compute: Callable[[list[dict]], list[Mapping]],
    batch_size: int,
    drop_fields: Sequence[str] = (),
    specs_of: Callable[[str], Mapping[str, dict]] | None = None,
) -> None:
    """Rewrite one shard with the members of ``new`` added to (or replaced in) every sample and those of
    ``drop_fields`` removed."""
    drop = {spec["member"] for spec in new.values()} | {stored[f]["member"] for f in drop_fields}
    want = {stored[f]["member"]: f for f in inputs}
    with tarfile.open(path, mode="r:") as tar, ShardWriter(path) as writer:
        pending: list[tuple[str, dict[str, bytes]]] = []

        def flush() -> None:
            samples = []
            for key, members in pending:
                sample = {"key": key}
                for member, name in want.items():
                    if member not in members:
                        raise ValueError(f"{path.name}: sample {key!r} has no member {key}.{member}")
                    where = f"{path}:{key}.{member}"
                    spec = (stored if specs_of is None else specs_of(key))[name]
                    sample[name] = decode_member(name, members[member], spec, where)
                samples.append(sample)
            values = list(compute(samples))
            if len(values) != len(samples):
                raise ValueError(
                    f"extend_shards: compute gave {len(values)} results for {len(samples)} samples"
                )
            for (key, members), value in zip(pending, values, strict=True):
                kept = {m: d for m, d in members.items() if m not in drop}
                writer.write(key, kept | encode_sample(value, new))
            pending.clear()

        for info in tar:
            if not info.isfile():
                continue
            key, member = _split_member(info.name)
            if not pending or pending[-1][0] != key:
                if len(pending) == batch_size:
                    flush()
                pending.append((key, {}))
            pending[-1][1][member] = tar.extractfile(info).read()
        if pending:
            flush()
        if writer.count != count:
            raise ValueError(f"{path}: holds {writer.count} samples, meta.json says {count}")


def extend_shards(
    root: str | Path,
    fields: Mapping[str, dict],
    compute: Callable[[list[dict]], list[Mapping]],
    *,
    inputs: Sequence[str],
    meta_updates: Mapping | None = None,
    redo: bool = False,
    drop_fields: Sequence[str] = (),
    batch_size: int = 64,
    on_shard: Callable[[int, float], None] | None = None,
) -> dict:
    """Add the fields ``fields`` (meta.json specs, e.g. ``{"text": {"member": "text.npy", "dtype":
    "bfloat16", "shape": [L, D]}}``) to every sample of the shard folder ``root``, in place, and return the
    new meta.json. ``compute(samples)`` gets up to ``batch_size`` samples as dicts holding ``"key"`` and the
    decoded ``inputs`` fields (e.g. ``["caption"]``) and returns one dict per sample with a value for each
    new field.

    Each shard is rewritten to ``.tmp`` and renamed (``ShardWriter``), keeping its other members and order;
    meta.json says ``complete: false`` until every shard is done, with ``meta_updates`` merged in. A rerun
    skips the shards that already hold every new member, unless ``redo`` (then every shard is rewritten and
    existing members of these fields are replaced). ``drop_fields`` (stored fields, not ``label``) are
    removed from meta.json and, in the shards rewritten, from the samples (pass ``redo``). ``on_shard(shard,
    seconds)`` is called after each."""
    import time

    root = Path(root)
    meta = read_meta(root)
    missing = [s["name"] for s in meta["shards"] if not (root / s["name"]).is_file()]
    if missing:
        raise ValueError(
            f"{root}: {len(missing)} of {len(meta['shards'])} shards are missing (e.g. {missing[:3]}): "
            f"finish making the shards first (rerun the tool that made them)"
        )
    stored = dict(meta["fields"])
    absent = [f for f in inputs if f not in stored]
    if absent:
        raise ValueError(f"{root}: the shards store no {absent} (fields: {sorted(stored)})")
    for name, spec in fields.items():
        if name not in MEMBERS or spec.get("member") not in MEMBERS[name]:
            raise ValueError(f"field {name!r} with member {spec.get('member')!r}: expected one of {MEMBERS}")
    if "label" in drop_fields or any(f not in stored for f in drop_fields):
        raise ValueError(f"extend_shards: cannot drop {list(drop_fields)} (stored: {sorted(stored)})")
    kept = {k: v for k, v in stored.items() if k not in drop_fields}
    new_meta = {**meta, **(meta_updates or {}), "fields": {**kept, **fields}, "complete": False}
    for p in root.glob("shard-*.tar.tmp"):
        p.unlink()
    _atomic_write_json(root / META, new_meta)
    members = [spec["member"] for spec in fields.values()]
    for i, spec in enumerate(meta["shards"]):
        path = root / spec["name"]
        if not redo and _has_members(path, members):
            continue
        t0 = time.perf_counter()
        specs_of = partial(sample_fields, meta)  # bucketed shards: the shapes of each sample's bucket
        _extend_shard(path, spec["count"], stored, fields, inputs, compute, batch_size, drop_fields, specs_of)
        if on_shard is not None:
            on_shard(i, time.perf_counter() - t0)
    finish_shards(root, new_meta)
    new_meta["complete"] = True
    return new_meta


def read_meta(root: str | Path) -> dict:
    """meta.json of a shard folder; ValueError naming the folder when it is missing or not ours."""
    root = Path(root)
    path = root / META
    if not path.is_file():
        hint = "" if root.is_dir() else " (the folder does not exist)"
        raise ValueError(
            f"--data.root {root}: no {META}{hint}; a shard folder is made by tools/make_shards.py or "
            f"tools/cache_latents.py (README 'Datasets')"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} v{meta.get('version')}, expected {FORMAT!r} v{VERSION}"
        )
    return meta


# ---------------------------------------------------------------------------------------------- from data


class PlannedSamples(torch.utils.data.Dataset):
    """Item ``i`` = ``(key, sample)`` of global sample ``positions[i]``: source clip ``j`` in repeat ``r``
    (``source_of``), drawn with the loader's augmentation seed of ``(seed, epoch=r, j)``: repeat r of a clip
    is the crop/flip a training run with that seed would draw for it in epoch r."""

    def __init__(self, dataset, positions: Sequence[int], source_size: int, seed: int):
        self.dataset, self.positions, self.source_size, self.seed = dataset, positions, source_size, seed

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[str, dict]:
        from minivdit.data import sample_seeds

        j, r = source_of(self.positions[i], self.source_size)
        rng = np.random.default_rng(int(sample_seeds(self.seed, r, np.array([j]))[0]))
        return sample_key(j, r), self.dataset.get(j, rng)


def describe_source(cfg, dataset) -> dict:
    """meta.json keys describing the source dataset of config ``cfg`` (a ``DataConfig``): ``source`` (the
    config minus loader-only fields), ``num_classes``, ``class_names``, ``seed``."""
    source = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LOADER_FIELDS}
    if not source.get("buckets", {}).get("sizes"):  # unbucketed: the plan of shards made before buckets
        source.pop("buckets", None)
    names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
    if names is None and cfg.dataset == "synthetic":
        from minivdit.data.synthetic import CLASS_NAMES

        names = CLASS_NAMES[: cfg.num_classes]
    num_classes = getattr(dataset, "num_classes", cfg.num_classes)  # real datasets: 0 when unconditional
    return {
        "source": source,
        "num_classes": int(num_classes),
        "class_names": list(names) if names else None,
        "seed": cfg.seed,
    }


def video_field(shape: Sequence[int] | None, format: str = "npy", *, crf: int = 18, fps: int = 8) -> dict:
    """meta.json field of clips of ``shape`` [F, 3, H, W] (None: bucketed, per bucket) stored as ``format``
    ("npy" or "mp4")."""
    if format not in ("npy", "mp4"):
        raise ValueError(f"video format must be 'npy' or 'mp4', got {format!r}")
    spec = {
        "member": f"video.{format}",
        "dtype": "uint8",
        "shape": None if shape is None else [int(x) for x in shape],
    }
    return spec | ({"crf": crf, "fps": fps} if format == "mp4" else {})


_WORKER_DATASET: dict = {}


def _write_clip_shard(cfg, root: str, meta: dict, shard: int) -> tuple[int, float]:
    import time

    from minivdit.data import build_dataset

    t0 = time.perf_counter()
    if _WORKER_DATASET.get("cfg") != cfg:
        _WORKER_DATASET.update(cfg=cfg, dataset=build_dataset(cfg))
    spec = meta["shards"][shard]
    start = shard * meta["samples_per_shard"]
    planned = PlannedSamples(
        _WORKER_DATASET["dataset"], range(start, start + spec["count"]), meta["source_size"], meta["seed"]
    )
    skipped: list = []
    write_shard(root, shard, meta, note_skipped((planned[i] for i in range(len(planned))), skipped))
    return shard, time.perf_counter() - t0, skipped


def note_skipped(samples: Iterable[tuple[str, dict]], skipped: list) -> Iterator[tuple[str, dict]]:
    """Pass ``(key, sample)`` pairs through, appending the ``(path, reason)`` of the bad sources each sample
    skipped (the real datasets' ``"skipped"``, ``minivdit/data/video.py``) to ``skipped``."""
    for key, sample in samples:
        skipped.extend(tuple(x) for x in sample.get("skipped", ()))
        yield key, sample


def log_shard(meta: dict, shard: int, took: float, skipped: list) -> None:
    log.info(f"{shard_name(shard)}: {meta['shards'][shard]['count']} samples ({took:.1f} s)")
    if skipped:
        paths = sorted({str(p) for p, _ in skipped})
        log.warning(f"{shard_name(shard)}: {len(paths)} unreadable sources replaced by other clips: {paths}")


def _one_thread() -> None:
    torch.set_num_threads(1)


def write_clip_shards(
    cfg,
    root: str | Path,
    *,
    format: str = "npy",
    samples_per_shard: int = 1000,
    workers: int = 0,
    repeats: int = 1,
    limit: int | None = None,
    overwrite: bool = False,
    crf: int = 18,
    fps: int = 8,
) -> Path:
    """Shards of the clips of ``DataConfig`` ``cfg``'s dataset (``tools/make_shards.py``): the first
    ``limit`` clips (all by default), ``repeats`` times, ``samples_per_shard`` per shard, by ``workers``
    processes (0: this one). Resumable: shards already written are skipped. Returns ``root``."""
    from minivdit.data import build_dataset

    if repeats < 1 or workers < 0 or (limit is not None and limit < 1):
        raise ValueError(f"need repeats >= 1, workers >= 0, limit >= 1, got {repeats}, {workers}, {limit}")
    root = Path(root)
    dataset = build_dataset(cfg)
    size = len(dataset) if limit is None else min(limit, len(dataset))
    first = PlannedSamples(dataset, [0], size, cfg.seed)[0][1]
    bucketed = getattr(dataset, "bucket_of", None) is not None
    shape = None if bucketed else tuple(first["video"].shape)  # buckets: per bucket, in meta["buckets"]
    fields = {
        "video": video_field(shape, format, crf=crf, fps=fps),
        "label": {"member": "label.cls"},
    }
    if first.get("caption") is not None:
        fields["caption"] = {"member": "caption.txt"}
    extra = {}
    if bucketed:
        extra["buckets"] = bucket_meta(dataset, size, lambda b: {"video": (b.frames, 3, b.height, b.width)})
    meta = make_meta(
        fields=fields,
        source_size=size,
        samples_per_shard=samples_per_shard,
        repeats=repeats,
        **describe_source(cfg, dataset),
        vae=None,
        teacher=None,
        made_by="tools/make_shards.py",
        **extra,
    )
    todo = prepare_shards(root, meta, overwrite=overwrite)
    log.info(f"{root}: {meta['num_samples']} clips in {len(meta['shards'])} shards, {len(todo)} to write")
    if workers == 0:
        _WORKER_DATASET.update(cfg=cfg, dataset=dataset)
        for shard, took, skipped in map(partial(_write_clip_shard, cfg, str(root), meta), todo):
            log_shard(meta, shard, took, skipped)
    elif todo:
        import multiprocessing as mp

        # spawn: the parent may hold torch/OpenMP threads, which fork does not carry over safely
        with mp.get_context("spawn").Pool(min(workers, len(todo)), initializer=_one_thread) as pool:
            job = partial(_write_clip_shard, cfg, str(root), meta)
            for shard, took, skipped in pool.imap_unordered(job, todo):
                log_shard(meta, shard, took, skipped)
    finish_shards(root, meta)
    return root


# ---------------------------------------------------------------------------------------------- index


def _split_member(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    key, _, member = base.partition(".")
    return prefix + key, member


def index_shard(path: Path, members: Sequence[str]) -> dict:
    """``{"keys": [...], "members": {member: [[offset, size], ...]}}`` of one tar, in tar order, for the
    wanted ``members``; ValueError naming the shard and key when a sample lacks one or the tar is broken."""
    want = set(members)
    keys: list[str] = []
    found: dict[str, dict[str, list[int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, member = _split_member(info.name)
                if not keys or key != keys[-1]:
                    if key in found:  # webdataset groups consecutive members: it would split this sample
                        raise ValueError(f"{path.name}: members of sample {key!r} are not contiguous")
                    keys.append(key)
                    found[key] = {}
                if member in want:
                    found[key][member] = [info.offset_data, info.size]
    except tarfile.TarError as e:
        raise ValueError(f"{path}: not a readable tar ({e})") from e
    out = {m: [] for m in members}
    for key in keys:
        for m in members:
            if m not in found[key]:
                raise ValueError(f"{path.name}: sample {key!r} has no member {key}.{m}")
            out[m].append(found[key][m])
    return {"keys": keys, "members": out}


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_index(
    root: str | Path, shards: Sequence[str], members: Sequence[str], *, write: bool = True
) -> list[dict]:
    """The index of ``shards`` (file names in ``root``), one dict per shard, from ``index.json`` where a
    shard's size and mtime are unchanged and its members were indexed, else by reading the tar (and then
    ``index.json`` is rewritten atomically; a read-only folder keeps the index in memory)."""
    root = Path(root)
    path = root / INDEX
    cached: dict = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text()).get("shards", {})
        except (json.JSONDecodeError, AttributeError):
            log.warning(f"{path}: unreadable, rebuilding the index")
    entries, changed = [], False
    for name in shards:
        stat = _stat(root / name)
        old = cached.get(name)
        if old and {k: old.get(k) for k in stat} == stat and set(members) <= set(old["members"]):
            entries.append(old)
            continue
        entries.append({**stat, **index_shard(root / name, members)})
        changed = True
    if changed and write:
        keep = {name: e for name, e in zip(shards, entries, strict=True)}
        try:
            _atomic_write_json(path, {"version": VERSION, "shards": keep})
        except OSError as e:
            log.warning(f"cannot write {path} ({e}); the shard index is rebuilt on every start")
    return entries


# ---------------------------------------------------------------------------------------------- reading


class ShardDataset:
    """Map-style dataset over a shard folder (module docstring): ``get(index, rng)`` reads sample ``index``
    (shards in name order, samples in tar order) by seeking to its members; ``rng`` only draws the posterior
    sample of cached moments (shards hold final clips). Returns ``{"video"?, "label", "caption"?,
    "latents"?, "feats"?, "text"?, "text_mask"?, "key"}`` for the stored fields, or only those of ``fields``
    (label is always read; ``text`` brings ``text_mask`` along, ``latents`` its ``latents_logvar``)."""

    def __init__(
        self, root: str | Path, *, fields: Sequence[str] | None = None, allow_incomplete: bool = False
    ):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        if not self.meta.get("complete") and not allow_incomplete:
            done = sum((self.root / s["name"]).is_file() for s in self.meta["shards"])
            raise ValueError(
                f"{self.root}: the shards are incomplete ({done} of {len(self.meta['shards'])} written; "
                f"meta.json 'complete' is false): rerun the tool that made them to finish"
            )
        stored = self.meta["fields"]
        wanted = [f for f in OPTIONAL_FIELDS if f in stored] if not fields else list(fields)
        if "text" in wanted and "text_mask" in stored and "text_mask" not in wanted:
            wanted.append("text_mask")  # tokens without their mask would be attended as if all were real
        self.latent_posterior = latent_posterior(self.meta, self.root)
        """How the cached latents are served (module docstring): "moments", "mean", "sample", or None."""
        if "latents" in wanted and "latents_logvar" in stored and "latents_logvar" not in wanted:
            wanted.append("latents_logvar")  # the mean alone would silently drop the posterior's spread
        bad = [f for f in wanted if f not in stored and f != "label"]
        if bad:
            raise ValueError(
                f"{self.root}: fields {bad} requested but the shards store only {sorted(stored)}"
            )
        self.fields = ["label"] + [f for f in OPTIONAL_FIELDS if f in wanted]
        self._specs = {f: stored[f] for f in self.fields}
        members = [spec["member"] for spec in self._specs.values()]
        names = [s["name"] for s in self.meta["shards"] if (self.root / s["name"]).is_file()]
        # The index covers every stored member, whichever fields this instance reads: one index.json for all.
        entries = load_index(self.root, names, [spec["member"] for spec in stored.values()])
        counts = {s["name"]: s["count"] for s in self.meta["shards"]}
        for name, entry in zip(names, entries, strict=True):
            if len(entry["keys"]) != counts[name]:
                raise ValueError(
                    f"{self.root / name}: holds {len(entry['keys'])} samples, meta.json says {counts[name]} "
                    f"(truncated or replaced? delete it and rerun the tool to rewrite it)"
                )
        if sum(len(e["keys"]) for e in entries) == 0:
            raise ValueError(f"{self.root}: the shards hold no samples")
        self._paths = [str(self.root / n) for n in names]
        self._shard = np.concatenate([np.full(len(e["keys"]), i, np.int32) for i, e in enumerate(entries)])
        self._keys = [k for e in entries for k in e["keys"]]
        self._ranges = {
            m: np.asarray([r for e in entries for r in e["members"][m]], np.int64) for m in members
        }
        self.num_classes = int(self.meta.get("num_classes") or 0)
        """Classes of the source dataset (0: unconditional), as the real datasets' ``num_classes``."""
        self.classes = self.meta.get("class_names")
        self.buckets = None
        """The buckets (``Bucket`` tuples) of bucketed shards (module docstring, "Buckets"), else None."""
        self.bucket_of = None
        """[len] bucket id of every sample (what the loader batches by), else None."""
        self._bucket_specs = None
        if info := self.meta.get("buckets"):
            from minivdit.data.buckets import parse_bucket

            self.buckets = tuple(parse_bucket(b) for b in info["sizes"])
            of_source = np.asarray(info["of_source"], np.int64)
            self.bucket_of = of_source[[key_source(k) for k in self._keys]]
            self._bucket_specs = [
                {f: spec | {"shape": shapes[f]} if f in shapes else spec for f, spec in self._specs.items()}
                for shapes in info["shapes"]
            ]

    @classmethod
    def from_config(cls, cfg) -> ShardDataset:
        """The ``"shards"`` dataset of a ``DataConfig``: ``cfg.root`` is the folder; the clips' frames and
        size must be ``cfg.num_frames`` and ``cfg.image_size`` (the model is built from them; ``S`` and
        ``S S`` are the same size)."""
        if not cfg.root:
            raise ValueError(
                "--data.dataset shards needs --data.root: a folder made by tools/make_shards.py or "
                "tools/cache_latents.py"
            )
        ds = cls(cfg.root, fields=getattr(cfg, "shard_fields", None) or None)
        buckets = getattr(cfg, "buckets", None)
        want = set(buckets.buckets) if buckets is not None and buckets.enabled else None
        have = None if ds.buckets is None else set(ds.buckets)
        if want != have:
            flag = " ".join(map(str, ds.buckets)) if ds.buckets else "(none: leave the flag out)"
            raise ValueError(
                f"{cfg.root}: the shards hold clips of buckets {sorted(map(str, have or ()))}, the run asks "
                f"for {sorted(map(str, want or ()))} (--data.buckets.sizes): set --data.buckets.sizes "
                f"{flag}, or make shards of the run's buckets (tools/make_shards.py --data.buckets.sizes ...)"
            )
        if ds.buckets is not None:  # sizes per bucket; num_frames / image_size are the model's nominal size
            return ds
        src = ds.meta.get("source") or {}
        frames, size = src.get("num_frames"), src.get("image_size")
        if "video" in ds.meta["fields"]:
            frames, _, h, w = ds.meta["fields"]["video"]["shape"]
            size = h if h == w else [h, w]
        have = (frames, None if size is None else _hw(size))
        if have != (cfg.num_frames, _hw(cfg.image_size)):
            flag = " ".join(map(str, size)) if isinstance(size, list | tuple) else size
            px = "x".join(map(str, size)) if isinstance(size, list | tuple) else size
            want = " ".join(map(str, cfg.image_size)) if isinstance(cfg.image_size, tuple) else cfg.image_size
            raise ValueError(
                f"{cfg.root}: the shards hold {frames}-frame clips at {px}px, but --data.num-frames "
                f"{cfg.num_frames} --data.image-size {want}: set them to {frames} and {flag}"
            )
        return ds

    def text_null(self) -> tuple[Tensor, Tensor | None]:
        """The cached empty-prompt tokens ``[L, Dt]`` (stored dtype) and their mask ``[L]`` bool (None when
        the encoder runs without one): the null context of caption dropout and CFG
        (``Cond.drop(keep, context=..., context_mask=...)``). ValueError when the shards hold no text."""
        return read_text_null(self.root, self.meta)

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, index: int) -> str:
        return self._keys[index]

    def read_members(self, index: int) -> dict[str, bytes]:
        """Raw bytes of sample ``index``'s members (``{"video.npy": b"...", ...}``)."""
        if not 0 <= index < len(self._keys):
            raise IndexError(f"ShardDataset: index {index} out of range [0, {len(self._keys)})")
        out = {}
        with open(self._paths[self._shard[index]], "rb") as f:
            for member, ranges in self._ranges.items():
                offset, size = ranges[index]
                f.seek(int(offset))
                out[member] = f.read(int(size))
                if len(out[member]) != size:
                    raise ValueError(
                        f"{self._where(index, member)}: truncated ({len(out[member])} of {size} bytes)"
                    )
        return out

    def _where(self, index: int, member: str) -> str:
        return f"{self._paths[self._shard[index]]}:{self._keys[index]}.{member}"

    def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
        """Sample ``index``; with cached moments ``latents`` is a posterior draw from ``rng`` (the mean when
        ``rng`` is None) and ``latents_logvar`` is not returned (module docstring)."""
        raw = self.read_members(index)
        sample = {"key": self._keys[index]}
        specs = self._specs
        if self.bucket_of is not None:
            sample["bucket"] = int(self.bucket_of[index])
            specs = self._bucket_specs[sample["bucket"]]
        for name, spec in specs.items():
            sample[name] = decode_member(name, raw[spec["member"]], spec, self._where(index, spec["member"]))
        return _draw_posterior(sample, rng)


def _draw_posterior(sample: dict, rng: np.random.Generator | None) -> dict:
    """Cached moments → ``latents = mean + exp(logvar / 2)·ε``, ε ~ N(0, I) from ``rng`` (the mean when
    ``rng`` is None); ``latents_logvar`` is consumed. Other samples pass through."""
    if "latents" in sample and "latents_logvar" in sample:
        logvar = sample.pop("latents_logvar").float()  # [F', C, h, w]
        if rng is not None:
            eps = torch.from_numpy(rng.standard_normal(tuple(logvar.shape), dtype=np.float32))
            sample["latents"] = sample["latents"] + torch.exp(0.5 * logvar) * eps  # [F', C, h, w]
    return sample


def latent_posterior(meta: Mapping, root: str | Path = "") -> str | None:
    """How the latents of ``meta`` were cached: "moments", "mean" or "sample" (module docstring), None when
    the shards hold no latents. An unstamped (older) cache is read as "sample" or "mean" from its
    ``vae.sample_posterior``, with a warning naming the rebuild command; an unknown stamp, or "moments"
    without ``latents_logvar``, is a ValueError naming it."""
    fields = meta.get("fields", {})
    if "latents" not in fields:
        return None
    stamp = meta.get("latent_posterior")
    if stamp is None:
        frozen = bool((meta.get("vae") or {}).get("sample_posterior"))
        what = "one posterior sample frozen at caching time" if frozen else "the posterior mean"
        log.warning(
            f"{root}: the cached latents are {what} (cached before minivdit stored the posterior's moments): "
            f"every epoch trains on the same latents, while diffusers and finetrainers re-sample the "
            f"posterior at every step; to cache the moments: {REBUILD_LATENTS}"
        )
        return "sample" if frozen else "mean"
    if stamp not in LATENT_POSTERIORS:
        raise ValueError(
            f"{root}: meta.json latent_posterior={stamp!r}, not one of {LATENT_POSTERIORS} that this "
            f"minivdit reads: re-cache the latents with {REBUILD_LATENTS}"
        )
    if stamp == "moments" and "latents_logvar" not in fields:
        raise ValueError(
            f"{root}: meta.json says latent_posterior='moments' but the shards store no latents_logvar: "
            f"re-cache the latents with {REBUILD_LATENTS}"
        )
    return stamp


def _hw(size) -> tuple[int, int]:
    from minivdit.data import frame_size

    return frame_size(size)


TEXT_NULL, TEXT_NULL_MASK = "text_null.npy", "text_null_mask.npy"
TEXT_IDENTITY_KEYS = (
    "class",
    "config_sha256",
    "weights_sha256",
    "tokenizer_sha256",
    "max_length",
    "use_mask",
    "clean",
    "use_vision",
    "layer",
    "caption_tokens",
    "frame_size",
    "system_prompt",
)
"""The keys of a text encoder's identity that decide its tokens (the folder names are recorded in meta.json
but not compared: folders move between machines). Its ``dtype`` (the encoder's weights and compute, not the
cache's storage dtype) is compared too, when the cache records one (``text_cache_mismatch``). ``clean`` (the
Wan prompt cleaning) is present only when True, so identities made before it existed still match; the last
five are a VLM's (``minivdit.conditioning.vlm.vlm_identity``: the prompt's template and frame, the layer),
absent from a T5's."""


def _short_identity(identity: Mapping | None) -> str:
    if not identity:
        return "none"
    parts = [f"{identity.get('class')}({identity.get('name') or '?'})"]
    for k in TEXT_IDENTITY_KEYS[1:]:
        v = identity.get(k)
        if v is None and k not in ("max_length", "use_mask"):  # a key the other kind of encoder lacks
            continue
        parts.append(f"{k}={v[:12] if isinstance(v, str) and k.endswith('sha256') else v}")
    return " ".join(parts)


def text_cache_mismatch(meta: Mapping, identity: Mapping | None) -> str | None:
    """Why the text tokens cached in the shards of ``meta`` do not fit a run whose text encoder has
    ``identity`` (``minivdit.conditioning.text.text_identity(cfg)`` or ``T5TextEncoder.identity()``), naming
    both identities; None when they fit, when the shards hold no text, or when ``identity`` is None (the run
    has no text encoder). Compared: ``TEXT_IDENTITY_KEYS``."""
    if identity is None or "text" not in meta.get("fields", {}):
        return None
    have = meta.get("text_encoder") or {}
    diff = [k for k in TEXT_IDENTITY_KEYS if have.get(k) != identity.get(k)]
    if have.get("dtype") is not None and identity.get("dtype") not in (None, have["dtype"]):
        diff.append("dtype")  # the encoder's compute dtype (not the cache's storage dtype)
    if not diff:
        return None
    return (
        f"text tokens were cached by another text encoder (differing: {', '.join(diff)}): cached by "
        f"[{_short_identity(have)}], the run has [{_short_identity(identity)}]; re-run tools/cache_text.py "
        f"--overwrite with the run's encoder, or point the run at the encoder that made the cache"
    )


def read_text_null(root: str | Path, meta: Mapping | None = None) -> tuple[Tensor, Tensor | None]:
    """The empty-prompt tokens ``[L, Dt]`` (stored dtype) and mask ``[L]`` (or None) that
    ``tools/cache_text.py`` stored next to the shards of ``root`` (``ShardDataset.text_null``)."""
    root = Path(root)
    meta = read_meta(root) if meta is None else meta
    info = (meta.get("text_encoder") or {}).get("null")
    if "text" not in meta.get("fields", {}) or not info:
        raise ValueError(f"{root}: the shards hold no cached text (run tools/cache_text.py on them first)")
    spec = meta["fields"]["text"]
    where = str(root / info["file"])
    try:
        data = (root / info["file"]).read_bytes()
    except OSError as e:
        raise ValueError(f"{where}: cannot read the cached empty-prompt tokens ({e})") from e
    context = decode_member("text", data, spec, where)
    mask = None
    if info.get("mask_file"):
        data = (root / info["mask_file"]).read_bytes()
        mask = decode_member("text_mask", data, meta["fields"]["text_mask"], str(root / info["mask_file"]))
    return context, mask


def write_text_null(
    root: str | Path, context: Tensor, mask: Tensor | None, fields: Mapping[str, dict]
) -> dict:
    """Store the empty-prompt tokens ``context [L, Dt]`` (and ``mask [L]``) next to the shards of ``root`` as
    ``TEXT_NULL`` (``TEXT_NULL_MASK``) in the dtype of ``fields["text"]``, atomically; returns the ``null``
    entry of meta.json's ``text_encoder`` (read back by :func:`read_text_null`)."""
    root = Path(root)
    values = {"text": context} | ({} if mask is None else {"text_mask": mask})
    specs = {k: fields[k] for k in values}
    encoded = encode_sample(values, specs)
    names = {"text": TEXT_NULL, "text_mask": TEXT_NULL_MASK}
    for k, spec in specs.items():
        path = root / names[k]
        durable.write_bytes(path, encoded[spec["member"]])
    return {"file": TEXT_NULL, "mask_file": TEXT_NULL_MASK if mask is not None else None}


TEACHER_FOLDERS = ("dinov2", "dinov3", "sam2", "vjepa2", "videomae", "videomae2")
"""``TeacherConfig`` fields naming encoder folders (``minivdit.align.teachers.ORDER``)."""
TEACHER_SETTINGS = ("sam2_stage", "layer", "prenorm", "drop_first_frame")
"""``TeacherConfig`` fields that change the features of the same encoders (``token_grid`` too: compared as
the grid the feats were cached on, below). A field a cache predates counts as its default."""


def cache_mismatches(
    meta: dict,
    *,
    vae: dict | None = None,
    teacher: dict | None = None,
    grid: Sequence[int] | None = None,
    text: Mapping | None = None,
) -> list[str]:
    """Why the caches of ``meta`` do not fit a run, as readable lines (empty: they fit). ``vae`` and
    ``teacher`` are the run's ``VAEConfig`` / ``TeacherConfig`` as ``minivdit.config.to_dict`` gives them,
    ``grid`` the DiT token grid, ``text`` the identity of the run's text encoder
    (``minivdit.conditioning.text.text_identity``).

    Compared: the VAE kind, then the VAE's content identity (``minivdit.models.vae.vae_identity``: hashes of
    its config and weights, computed here from the run's ``kind``/``path``) against the one
    ``tools/cache_latents.py`` stamped into meta.json; which teacher encoders are set, each one's content
    identity (``minivdit.align.teachers.teacher_identity``), ``TEACHER_SETTINGS``, the grid, and the text
    encoder (:func:`text_cache_mismatch`). The grid compared is the run's teacher grid: its
    ``teacher.token_grid``, or the DiT's ``grid`` when that is None; feats cached on another grid than the
    DiT's are fine when the run's teacher asks for that grid. Folder names and paths are not compared:
    folders move between machines, one VAE has two spellings (``runs/x``, ``runs/x/vae``), and different
    VAEs share a name (every ``recipes/vae_causal3d.py`` run exports to ``vae/``). Caches written before the
    identities were stamped are accepted with a logged warning that only the kind (and which encoders) could
    be checked."""
    out = []
    text_problem = text_cache_mismatch(meta, text)
    if text_problem:
        out.append(text_problem)
    fields = meta.get("fields", {})
    if vae is not None and "latents" in fields:
        out += _vae_mismatches(meta.get("vae") or {}, vae)
    if teacher is not None and "feats" in fields:
        have = meta.get("teacher") or {}
        out += _teacher_mismatches(have, teacher)
        want = teacher.get("token_grid") or grid  # the run's teacher grid (TeacherConfig.token_grid)
        if want is not None and have.get("grid") is not None and list(have["grid"]) != list(want):
            whose = (
                "--teacher.token-grid"
                if teacher.get("token_grid")
                else "the DiT's, as --teacher.token-grid is unset"
            )
            out.append(
                f"feats were cached on a {list(have['grid'])} token grid, the run's teacher grid is "
                f"{list(want)} ({whose}): set --teacher.token-grid {' '.join(map(str, have['grid']))} to "
                f"train on these feats (the align head then matches the grids, --align.grid-match), or "
                f"re-run tools/cache_latents.py on the run's grid"
            )
    return out


SAMPLER_FIELDS = {
    "interval": ("frame_interval",),
    "fps": ("fps", "skip_frames", "random_start"),
    "even": ("skip_frames",),
}
"""``DataConfig.frame_sampling`` → the fields that decide which frames of a real video it takes."""


def _data_flag(name: str, value) -> str:
    """The command-line spelling of ``DataConfig.<name> = value`` (tyro: ``--data.no-x`` for a false bool)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--data.{flag}" if value else f"--data.no-{flag}"
    if isinstance(value, (list, tuple)):
        return f"--data.{flag} " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"--data.{flag} {value}"


def sampler_mismatches(meta: Mapping, data) -> list[str]:
    """Why the clips in the shards of ``meta`` were not taken from their videos as the run's ``data`` (a
    ``DataConfig``) takes them (empty: they were). Compared: the frame sampler and the fields that decide its
    frames (``SAMPLER_FIELDS``), from meta.json's ``source`` (``tools/make_shards.py``,
    ``tools/cache_latents.py``). Synthetic sources are not compared: their clips span the whole motion
    whatever the sampler."""
    source = meta.get("source") or {}
    if source.get("dataset") in (None, "synthetic") or "frame_sampling" not in source:
        return []
    names = ("frame_sampling", *SAMPLER_FIELDS.get(source["frame_sampling"], ()))
    listed = lambda v: [float(x) for x in v] if isinstance(v, (list, tuple)) else v  # JSON: tuples as lists
    differ = [k for k in names if listed(source.get(k)) != listed(getattr(data, k))]
    if not differ:
        return []
    theirs = ", ".join(f"{k}={source.get(k)!r}" for k in differ)
    ours = ", ".join(f"{k}={getattr(data, k)!r}" for k in differ)
    flags = " ".join(_data_flag(k, source.get(k)) for k in names)
    return [
        f"the shards' clips were sampled with {theirs} (meta.json source), the run samples with {ours}: "
        f"rebuild them with the run's --data.* flags (python tools/make_shards.py ..., then any caches), "
        f"or train on these clips with {flags}"
    ]


PRECISION_REBUILD = "python tools/cache_latents.py <the same flags> --precision {} --overwrite"


def precision_mismatches(meta: Mapping, precision: str) -> list[str]:
    """Why the latents / teacher features of ``meta`` were not computed in the run's ``precision`` (the
    autocast the trainer would encode under: ``train_step``), empty when they were or when meta.json
    predates the stamp (``precision``, written by ``tools/cache_latents.py``)."""
    have = meta.get("precision")
    if have is None or not ({"latents", "feats"} & set(meta.get("fields", {}))) or have == precision:
        return []
    return [
        f"the cached latents/feats were computed under --precision {have} (meta.json precision), the run "
        f"encodes under {precision}: re-cache with " + PRECISION_REBUILD.format(precision)
    ]


def clip_mismatches(meta: Mapping, data) -> list[str]:
    """Why the clips the shards' latents / feats were computed from are not the run's clips (empty: they
    are): the frame count and the frame size of the source (meta.json ``source``, written by
    ``tools/make_shards.py``) against the run's ``data`` (a ``DataConfig``). The DiT is built for the run's
    clips, so cached latents of other clips would fail deep in the forward, or train on the wrong clips."""
    from minivdit.data import frame_size

    source = meta.get("source") or {}
    if not ({"latents", "feats"} & set(meta.get("fields", {}))) or "num_frames" not in source:
        return []
    if meta.get(
        "buckets"
    ):  # clips of the buckets' sizes, which ShardDataset.from_config matched to the run's
        return []
    out = []
    if int(source["num_frames"]) != data.num_frames:
        out.append(
            f"the cached latents/feats come from {source['num_frames']}-frame clips (meta.json "
            f"source.num_frames), the run expects {data.num_frames} (--data.num-frames)"
        )
    if source.get("image_size") is not None and frame_size(source["image_size"]) != data.frame_size:
        out.append(
            f"the cached latents/feats come from {list(frame_size(source['image_size']))} frames (meta.json "
            f"source.image_size), the run expects {list(data.frame_size)} (--data.image-size)"
        )
    if out:
        out.append(
            "set --data.num-frames / --data.image-size to the shards' clips, or rebuild the shards from "
            "clips of the run's size (python tools/make_shards.py ..., then " + REBUILD_LATENTS + ")"
        )
    return out


START_FRAMES = ("clean", "noised")
"""meta.json's ``start_frame.frame``: frame 0 encoded as it is (FlashI2V's z_c), or with CogVideoX-I2V's pixel
noise σ·ε drawn once per clip (``tools/cache_latents.py --start-frame``)."""


def start_frame_mismatches(meta: Mapping, read: Iterable[str], *, flashi2v: bool, i2v) -> list[str]:
    """Why the shards of ``meta``, of which a run reads the fields ``read`` (``ShardDataset.fields``), cannot
    give a run its image condition (empty: they can, or the run has none). ``flashi2v``: the run is FlashI2V
    (its z_c is frame 0 encoded clean); ``i2v``: the run's ``I2VConfig`` (``conditioning/i2v.py``). The
    condition comes from the cached ``image_latents`` when they are read, else from the pixel clips, encoded
    online; anyframe always encodes its noise-filled clips online, so it needs the clips (and uses cached
    frame-0 latents for its i = 0 samples)."""
    fields = set(read)
    i2v_on = i2v is not None and i2v.enabled
    if not (flashi2v or i2v_on):
        return []
    rebuild = "python tools/cache_latents.py <the same --data.* / --vae.* flags> --start-frame {} --overwrite"
    want = "clean" if flashi2v else "noised"
    if "image_latents" not in fields:
        if "video" in fields:
            return []  # encoded online from frame 0 of the clips
        return [
            f"the run's image condition ({'--flashi2v' if flashi2v else f'--i2v.mode {i2v.mode}'}) needs "
            f"frame 0 of each clip: the run reads neither the clips nor cached start-frame latents (read: "
            f"{sorted(fields)}; --data.shard-fields); add them to --data.shard-fields if the shards hold "
            f"them, else re-cache with " + rebuild.format(want)
        ]
    stamp = meta.get("start_frame") or {}
    out = []
    if stamp.get("frame") != want:
        why = (
            "FlashI2V conditions on the clean frame"
            if flashi2v
            else "CogVideoX-I2V conditions on the frame with pixel noise"
        )
        out.append(
            f"the cached image_latents encode frame 0 {stamp.get('frame')!r} (meta.json start_frame.frame), "
            f"the run needs {want!r}: {why}; re-cache with " + rebuild.format(want)
        )
    elif not flashi2v:
        for key in ("noise_log_mean", "noise_log_std"):
            if stamp.get(key) != getattr(i2v, key):
                out.append(
                    f"the cached image_latents were noised with {key}={stamp.get(key)} (meta.json), "
                    f"the run has --i2v.{key.replace('_', '-')} {getattr(i2v, key)}; re-cache with "
                    + rebuild.format(want)
                    + f" --{key.replace('_', '-')} {getattr(i2v, key)}"
                )
    if i2v_on and i2v.mode == "anyframe" and "video" not in fields:
        out.append(
            "--i2v.mode anyframe encodes each clip with its noise fill online: it needs the pixel clips in "
            "the shards (cache with --keep-video); cached frame-0 latents serve its i = 0 samples only"
        )
    return out


def _vae_mismatches(have: Mapping, vae: Mapping) -> list[str]:
    from minivdit.identity import identity_diff
    from minivdit.models.vae import VAEConfig, vae_identity

    kind, path = vae.get("kind"), vae.get("path")
    if have.get("kind") != kind:
        return [
            f"latents were cached with vae.kind={have.get('kind')!r} (vae.path={have.get('path')!r}), the "
            f"run has {kind!r}: set --vae.kind/--vae.path to the VAE that made the cache, or re-run "
            f"tools/cache_latents.py with the run's VAE"
        ]
    cached = have.get("identity")
    if not cached:
        log.warning(
            f"the cached latents record no VAE identity (cached before tools/cache_latents.py stamped one): "
            f"only the kind {kind!r} is checked, not that the VAE is the same (cached with "
            f"vae.path={have.get('path')!r}, the run has {path!r}); re-run tools/cache_latents.py to have it "
            f"checked"
        )
        return []
    try:
        mine = vae_identity(VAEConfig(kind=kind, path=path))
    except ValueError as e:
        return [f"cannot identify the run's VAE to check the cached latents against it: {e}"]
    diff = identity_diff(cached, mine)
    if not diff:
        return []
    return [
        f"latents were cached by another VAE (differing: {', '.join(diff)}): the cache was made with the VAE "
        f"in {cached.get('folder')}, the run's --vae.path {path} is {mine['folder']}; re-run "
        f"tools/cache_latents.py with --vae.path {path} (a new --out, or --overwrite), or point --vae.path "
        f"at the VAE that made the cache ({cached.get('folder')})"
    ]


def _teacher_mismatches(have: Mapping, teacher: Mapping) -> list[str]:
    from minivdit.align.teachers import FEATURES, TeacherConfig, teacher_identity
    from minivdit.identity import identity_diff

    out = []
    if have.get("features") != FEATURES:  # unstamped: L2-normalised per token, before the head's averaging
        cached = repr(have["features"]) if have.get("features") else "L2-normalised tokens (no stamp)"
        out.append(
            f"feats were cached as {cached}, the run's teacher gives {FEATURES!r} tokens that the head "
            f"normalises after its frame averaging and grid resampling (minivdit.align.teachers): re-run "
            f"tools/cache_latents.py (a new --out, or --overwrite) to cache them again"
        )
    both = [k for k in TEACHER_FOLDERS if have.get(k) and teacher.get(k)]
    for k in TEACHER_FOLDERS:
        if bool(have.get(k)) != bool(teacher.get(k)):
            out.append(f"feats were cached with teacher.{k}={have.get(k)!r}, the run has {teacher.get(k)!r}")
    cached = have.get("identity") or {}
    if unchecked := [k for k in both if k not in cached]:
        log.warning(
            f"the cached feats record no identity of teacher {', '.join(unchecked)} (cached before "
            f"tools/cache_latents.py stamped one): not checked that the run's encoders are the same; re-run "
            f"tools/cache_latents.py to have them checked"
        )
    if checked := [k for k in both if k in cached]:
        try:
            mine = teacher_identity(TeacherConfig(**{k: teacher[k] for k in checked}))
        except ValueError as e:
            return out + [f"cannot identify the run's teachers to check the cached feats against them: {e}"]
        for k in checked:
            if diff := identity_diff(cached[k], mine[k]):
                out.append(
                    f"feats were cached by another {k} (differing: {', '.join(diff)}): the cache was made "
                    f"with {cached[k].get('folder')}, the run's --teacher.{k} {teacher[k]} is "
                    f"{mine[k]['folder']}; re-run tools/cache_latents.py with --teacher.{k} {teacher[k]}, "
                    f"or point --teacher.{k} at the encoder that made the cache ({cached[k].get('folder')})"
                )
    defaults = dataclasses.asdict(TeacherConfig())
    for k in TEACHER_SETTINGS:
        cached, mine = _setting(have.get(k, defaults[k])), _setting(teacher.get(k, defaults[k]))
        if cached != mine:
            out.append(f"feats were cached with teacher.{k}={cached!r}, the run has {mine!r}")
    return out


def _setting(value):
    """A setting as JSON gives it back: tuples (``prenorm``) as lists, so a cache and a run compare."""
    return [_setting(v) for v in value] if isinstance(value, tuple | list) else value


# ---------------------------------------------------------------------------------------------- streaming


def _split_by(src: Iterator, *, rank: int, world: int):
    yield from (x for i, x in enumerate(src) if i % world == rank)


def _decode_wds(raw: dict, *, specs: dict[str, dict], seed: int, meta: Mapping | None = None) -> dict:
    where = f"{raw.get('__url__', '?')}:{raw['__key__']}"
    sample = {"key": raw["__key__"]}
    if meta is not None and meta.get("buckets"):  # the shapes of the sample's bucket
        per = sample_fields(meta, raw["__key__"])
        specs = {name: per[name] for name in specs}
    for name, spec in specs.items():
        if spec["member"] not in raw:
            raise ValueError(f"{where}.{spec['member']}: missing member")
        sample[name] = decode_member(name, raw[spec["member"]], spec, f"{where}.{spec['member']}")
    # cached moments: the posterior draw is a function of (seed, key), whichever worker reads the sample
    rng = np.random.default_rng([seed, zlib.crc32(raw["__key__"].encode())])
    return _draw_posterior(sample, rng)


def iter_shards(
    root: str | Path,
    *,
    rank: int | None = None,
    world: int | None = None,
    shuffle_shards: bool = True,
    buffer: int = 1000,
    seed: int = 0,
    fields: Sequence[str] | None = None,
    urls: str | Sequence[str] | None = None,
):
    """Stream shards with ``webdataset`` (for object stores, where seeking is costly): shards are split over
    ranks (``rank``/``world``; default ``webdataset.split_by_node``, i.e. torch.distributed or the
    RANK/WORLD_SIZE variables), then over DataLoader workers, shuffled (``seed``), and samples are mixed in a
    ``buffer``-sample shuffle buffer (0: none). Yields the dicts ``ShardDataset.get`` returns::

        loader = DataLoader(iter_shards(root), batch_size=8, num_workers=4, collate_fn=collate)

    ``root`` is a local folder holding at least ``meta.json`` (it describes the fields); ``urls`` are the
    shards as webdataset takes them (a list, a brace pattern, ``pipe:`` / ``http`` URLs); default: the
    shards in ``root``.

    The orders are a function of ``seed`` (shard order within a worker, then the buffer): build one stream
    per epoch with ``seed=base + epoch`` to reshuffle. No sample is read twice in a pass, but ranks may get
    different sample counts (fewer shards than ``world × workers`` leave some workers idle), there is no
    exact resume position, and the order depends on the number of workers: use ``ShardDataset``
    (``--data.dataset shards``) for training runs that resume. Cached moments are sampled with a generator
    of ``(seed, key)``: a fresh draw per epoch when ``seed`` changes with it."""
    import webdataset as wds

    root = Path(root)
    meta = read_meta(root)
    stored = meta["fields"]
    wanted = [f for f in OPTIONAL_FIELDS if f in stored] if not fields else list(fields)
    latent_posterior(meta, root)  # refuses an unknown stamp, warns about an unstamped cache
    if "latents" in wanted and "latents_logvar" in stored and "latents_logvar" not in wanted:
        wanted.append("latents_logvar")
    specs = {f: stored[f] for f in ["label"] + [f for f in OPTIONAL_FIELDS if f in wanted]}
    if urls is None:
        urls = [str(root / s["name"]) for s in meta["shards"] if (root / s["name"]).is_file()]
    elif not isinstance(urls, str):
        urls = list(urls)
    if rank is None or world is None:
        nodesplitter = wds.split_by_node
    else:
        if not 0 <= rank < world:
            raise ValueError(f"iter_shards: need 0 <= rank < world, got {rank}, {world}")
        nodesplitter = partial(_split_by, rank=rank, world=world)
    dataset = wds.WebDataset(
        urls,
        shardshuffle=(len(meta["shards"]) if shuffle_shards else False),  # buffer holding every shard
        detshuffle=True,  # shard order from seed: reproducible
        seed=seed,
        nodesplitter=nodesplitter,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # fewer shards than ranks × workers: the idle ones yield nothing
    )
    if buffer > 0:
        dataset = dataset.shuffle(buffer, seed=seed)
    return dataset.map(partial(_decode_wds, specs=specs, seed=seed, meta=meta))


__all__ = [
    "ShardDataset",
    "bucket_meta",
    "key_source",
    "sample_fields",
    "PlannedSamples",
    "ShardWriter",
    "cache_mismatches",
    "extend_shards",
    "read_text_null",
    "text_cache_mismatch",
    "write_text_null",
    "decode_member",
    "encode_sample",
    "finish_shards",
    "iter_shards",
    "load_index",
    "make_meta",
    "plan_shards",
    "prepare_shards",
    "read_meta",
    "sample_key",
    "shard_name",
    "source_of",
    "video_field",
    "write_clip_shards",
    "write_shard",
]
