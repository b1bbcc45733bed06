"""Textual inversion: the embeddings of the embeddings folder, which of them fit a model, and where their trigger
words are in a prompt's token ids.

``EmbeddingDatabase`` walks ``--embeddings-dir`` (default ``<data-dir>/embeddings``), subfolders included, and
reads each file once per size and mtime (``modules.textual_inversion_files``). Which embeddings a model can use is
decided per model, from the widths of its text encoders: the rest are "skipped" (A1111's word), with the reason in
the log, never an error. A generation asks for an ``EmbeddingLookup`` for its model (``lookup_for``); the prompt
encoder (``modules.sd_pipeline.PromptEncoder``) finds the trigger words' token ids with it and puts the vectors in
their place, for that generation only: the tokenizer and the text encoder are never changed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from modules import sd_models, shared

log = logging.getLogger("serena.textual_inversion")

#: One CLIP window (``sd_pipeline.CHUNK``): an embedding must fit in one, as A1111 never splits it across two.
MAX_VECTORS = 75


def unfit(embedding, widths: tuple[int, ...]) -> str | None:
    """Why ``embedding`` cannot be used by a model whose text encoders have ``widths``; ``None`` if it can.

    Unknown widths (no checkpoint to ask) check nothing, as A1111 without a model.
    """
    if embedding.count > MAX_VECTORS:
        return f"{embedding.count} vectors: more than one {MAX_VECTORS}-token chunk holds"
    if not widths or embedding.widths == tuple(sorted(widths)):
        return None
    model = " + ".join(map(str, widths))
    if embedding.sdxl:
        return f"an SDXL embedding (clip_l + clip_g, shape {embedding.shape}); the model's text encoder is {model} wide"
    return f"shape {embedding.shape}; the model's text encoder is {model} wide"


@dataclass(frozen=True)
class Evaluation:
    """The embeddings found, split for one model: ``loaded`` by name, ``skipped`` by name with the reason."""

    loaded: dict[str, Any]
    skipped: dict[str, tuple[Any, str]]


class EmbeddingDatabase:
    """The embedding files of ``dirs``. A file is read again only when its size or mtime changed (or on
    ``scan(force=True)``, A1111's refresh); a file that cannot be read is logged once and left out.

    Names are file names without extension, wherever the file lies. Two files of one name: the first in a sorted
    walk (a folder's own files before its subfolders) is used and the other is logged.
    """

    def __init__(self, dirs: tuple[str, ...], allow_pickle: bool):
        self.dirs, self.allow_pickle = tuple(dirs), bool(allow_pickle)
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple, Any]] = {}  # path -> (size and mtime, Embedding or None if unreadable)
        self._reported: set[tuple[str, str, str]] = set()  # (name, sha256, why) of skips already logged

    def scan(self, force: bool = False) -> dict[str, Any]:
        """``{name: Embedding}`` of every readable embedding file, in walk order."""
        from modules import textual_inversion_files

        with self._lock:
            if force:
                self._files.clear()
            seen, found = {}, {}
            for path in self._paths(textual_inversion_files.EXTENSIONS):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if st.st_size == 0:
                    continue  # A1111 passes over empty files silently
                signature = (st.st_size, st.st_mtime_ns)
                cached = self._files.get(path)
                if cached is None or cached[0] != signature:
                    cached = (signature, self._read(path, textual_inversion_files))
                seen[path] = cached
                embedding = cached[1]
                if embedding is None:
                    continue
                if embedding.name in found:
                    if cached is not self._files.get(path):  # once per file version, not on every scan
                        log.warning("embedding %s: %s has the same name as %s and is not used", embedding.name,
                                    path, found[embedding.name].path)
                    continue
                found[embedding.name] = embedding
            self._files = seen
            return found

    def evaluate(self, widths: tuple[int, ...]) -> Evaluation:
        """The embeddings split by whether a model with text encoders of ``widths`` can use them, each part sorted
        by name regardless of case (A1111's order)."""
        loaded, skipped = {}, {}
        for name, embedding in sorted(self.scan().items(), key=lambda item: item[0].lower()):
            why = unfit(embedding, widths)
            if why is None:
                loaded[name] = embedding
            else:
                skipped[name] = (embedding, why)
                if (name, embedding.sha256, why) not in self._reported:
                    self._reported.add((name, embedding.sha256, why))
                    log.info("embedding %s skipped: %s", name, why)
        return Evaluation(loaded, skipped)

    def _paths(self, extensions: tuple[str, ...]):
        for base in self.dirs:
            for root, dirs, files in os.walk(base, followlinks=True):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(extensions):
                        yield os.path.join(root, name)

    def _read(self, path: str, files):
        try:
            return files.read_embedding(path, allow_pickle=self.allow_pickle)
        except (ValueError, OSError) as e:
            log.warning("embedding %s not loaded: %s", path, e)
            return None


@dataclass
class EmbeddingLookup:
    """The loaded embeddings of one model, found by their trigger words' token ids (A1111's
    ``find_embedding_at_position``), and the embeddings a generation's prompt encoder put in (``used``, for the
    infotext).

    ``index`` maps a trigger word's first token id to ``(ids, embedding)`` pairs, longest first, so the longest
    trigger word that matches wins.
    """

    index: dict[int, list[tuple[tuple[int, ...], Any]]]
    used: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, tokenizer, embeddings, used: dict | None = None) -> "EmbeddingLookup":
        index: dict[int, list] = {}
        for embedding in embeddings:
            ids = tuple(tokenizer(embedding.name, add_special_tokens=False)["input_ids"])
            if ids:
                index.setdefault(ids[0], []).append((ids, embedding))
        for matches in index.values():
            matches.sort(key=lambda match: len(match[0]), reverse=True)
        return cls(index, {} if used is None else used)

    def find(self, tokens: list[int], offset: int):
        """``(embedding, number of ids its trigger word takes)`` whose trigger word starts at ``tokens[offset]``,
        or ``None``."""
        for ids, embedding in self.index.get(tokens[offset], ()):
            if tuple(tokens[offset:offset + len(ids)]) == ids:
                return embedding, len(ids)
        return None

    def record(self, embedding) -> None:
        self.used.setdefault(embedding.name, embedding)


_database: EmbeddingDatabase | None = None
_database_lock = threading.Lock()


def database() -> EmbeddingDatabase:
    """The process's database, for the current embeddings folder and pickle flag."""
    global _database
    dirs = (shared.data_paths.embeddings_dir,)
    allow_pickle = bool(getattr(shared.cmd_opts, "allow_pickle_checkpoints", False))
    with _database_lock:
        if _database is None or (_database.dirs, _database.allow_pickle) != (dirs, allow_pickle):
            _database = EmbeddingDatabase(dirs, allow_pickle)
        return _database


def model_widths(model) -> tuple[int, ...]:
    """The widths of a loaded model's text encoders (``ModelFacts.text_encoder_widths``); ``()`` when unknown."""
    facts = getattr(model, "facts", None)
    return tuple(getattr(facts, "text_encoder_widths", ()) or ())


def lookup_for(model, used: dict | None = None) -> EmbeddingLookup | None:
    """The lookup of the embeddings ``model`` can use, for one generation (``used`` is shared with an earlier
    lookup of the same generation, Hires fix's second checkpoint); ``None`` for a model without a tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None
    evaluation = database().evaluate(model_widths(model))
    return EmbeddingLookup.build(tokenizer, evaluation.loaded.values(), used)


def checkpoint_widths() -> tuple[int, ...]:
    """The text encoder widths of the checkpoint the next generation runs on, from its header (no load)."""
    found = sd_models.checkpoint_facts(shared.opts.sd_model_checkpoint)
    return found[1].text_encoder_widths if found else ()


def hashes_infotext(used: dict) -> str | None:
    """A1111's ``TI hashes`` value, ``"name: 12hex, ..."`` (":" and "," left out of names), or ``None``."""
    entries = [f"{name.replace(':', '').replace(',', '')}: {embedding.shorthash}" for name, embedding in used.items()]
    return ", ".join(entries) or None
