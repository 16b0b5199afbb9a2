"""The plugin manager: built-in encoders are registered like third-party ones."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

import pluggy

from domain.errors import UnknownEncoder
from domain.model import EncoderInfo
from domain.ports import Encoder
from encoders import hookspecs
from encoders.hookspecs import EncoderFamily, EncoderOptions

DEFAULT_PLUGINS: tuple[str, ...] = (
    "encoders.fashion_lite.plugin",
    "encoders.open_clip_plugin",
    "encoders.image_only",
)


def make_plugin_manager(
    load_entry_points: bool = True, default_plugins: Sequence[str] = DEFAULT_PLUGINS
) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in default_plugins:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def split_encoder_id(encoder_id: str) -> tuple[str, str]:
    family, _, spec = encoder_id.partition(":")
    return family.strip(), spec.strip()


class EncoderRegistry:
    """Finds encoder families by id prefix and builds each encoder once per process."""

    def __init__(
        self,
        plugin_manager: pluggy.PluginManager,
        default_id: str,
        options: EncoderOptions | None = None,
    ) -> None:
        self._families: dict[str, EncoderFamily] = {}
        for families in plugin_manager.hook.fashion_search_register_encoders():
            for family in families:
                self._families.setdefault(family.name, family)
        self._default_id = default_id
        self._options = options or EncoderOptions()
        self._instances: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    @property
    def default_id(self) -> str:
        return self._default_id

    @property
    def families(self) -> dict[str, EncoderFamily]:
        return dict(self._families)

    def get(self, encoder_id: str | None = None) -> Encoder:
        encoder_id = (encoder_id or self._default_id).strip()
        with self._lock:
            if encoder_id in self._instances:
                return self._instances[encoder_id]
            family_name, spec = split_encoder_id(encoder_id)
            family = self._families.get(family_name)
            if family is None:
                known = ", ".join(sorted(self._families)) or "none"
                raise UnknownEncoder(f"no encoder plugin provides {encoder_id!r} (known: {known})")
            encoder = family.factory(spec, self._options)
            self._instances[encoder_id] = encoder
            self._instances.setdefault(encoder.id, encoder)
            return encoder

    def register_instance(self, encoder: Encoder) -> None:
        """Make an already-built encoder available under its id (tests, notebooks)."""
        with self._lock:
            self._instances[encoder.id] = encoder

    def available(self) -> list[EncoderInfo]:
        infos: dict[str, EncoderInfo] = {}
        for encoder in list(self._instances.values()):
            infos[encoder.id] = EncoderInfo(encoder.id, encoder.dim, encoder.modalities)
        for family in self._families.values():
            if not family.available or not family.examples:
                continue
            example = family.examples[0]
            if example not in infos:
                infos[example] = EncoderInfo(
                    example, family.dim or 0, family.modalities, family.description
                )
        return sorted(infos.values(), key=lambda i: (i.id != self._default_id, i.id))
