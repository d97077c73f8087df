"""Where artifacts can be fetched from: one module per provider, registered in ``PROVIDERS``.

A provider module defines one pydantic model ``<Name>Mirror(MirrorBase)`` with a literal
``type`` and ``resolve(mirror, session) -> Source`` (see :mod:`.base`). Adding a provider
is: import its module here and add it to ``PROVIDERS``; the manifest's ``Mirror`` union,
``TYPES`` and :func:`resolve` follow.

    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(Mirror).validate_python({"type": "url", "url": "https://example.org/x.pt"}).describe()
    'url https://example.org/x.pt'
"""
from __future__ import annotations

from types import ModuleType
from typing import Annotated, Union

import requests
from pydantic import Field

from phasegpt_ckpt.source.mirrors import gdrive, hf, local, osf, url, zenodo
from phasegpt_ckpt.source.mirrors.base import MirrorBase, Source

PROVIDERS: tuple[ModuleType, ...] = (url, local, hf, zenodo, osf, gdrive)


def _model_of(provider: ModuleType) -> type[MirrorBase]:
    """The one ``MirrorBase`` subclass a provider module defines."""
    (model,) = [obj for obj in vars(provider).values()
                if isinstance(obj, type) and issubclass(obj, MirrorBase) and obj.__module__ == provider.__name__]
    return model


_RESOLVERS = {_model_of(provider): provider.resolve for provider in PROVIDERS}
TYPES: tuple[str, ...] = tuple(model.model_fields["type"].default for model in _RESOLVERS)

Mirror = Annotated[Union[tuple(_RESOLVERS)], Field(discriminator="type")]


def resolve(mirror: MirrorBase, session: requests.Session) -> Source:
    """Ask ``mirror``'s provider where its bytes are (raises ``MirrorFailed`` when it can't say)."""
    return _RESOLVERS[type(mirror)](mirror, session)
