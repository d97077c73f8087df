"""The one YAML reader: the manifest, run configs and model configs, every problem one line with its line number.

Safe loading only (PyYAML's ``SafeLoader``: plain data, never a Python object), and aliases are
bounded: a few lines of nested anchors (a "billion laughs") would describe billions of values once
anything walks them (pydantic, ``model_dump``, a YAML dump), so a document whose aliases add more
than :data:`MAX_ALIAS_GROWTH` values, or whose alias refers to a node containing it, is refused
before anything is built from it.

>>> import tempfile; path = Path(tempfile.mkdtemp()) / "run.yaml"
>>> _ = path.write_text("model:\\n  n_layers: 2\\n  d_model: [64\\n")
>>> read_yaml(path, "config")
Traceback (most recent call last):
...
phasegpt_ckpt.errors.BadInput: config ... is not valid YAML at line 4: expected ',' or ']', but got '<stream end>'
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from phasegpt_ckpt.errors import BadInput

MAX_ALIAS_GROWTH = 10_000  # values aliases may add to a document (a hand-written one adds a few dozen)


def read_yaml(path: str | Path, what: str) -> Any:
    """The document in the YAML file ``path`` (None when empty), or a one-line :class:`BadInput`.

    ``what`` names the file for the message ("manifest", "config", "model config"); the message
    names the file, the line YAML reports (where it reports one) and the problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {path} is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise BadInput(f"{what} {path} is not a UTF-8 text file") from None
    except OSError as err:
        raise BadInput(f"cannot read {what} {path}: {err.strerror or type(err).__name__}") from None
    try:
        return load_text(text, what, path)
    except yaml.reader.ReaderError as err:  # a character YAML refuses; it knows the offset, not the line
        line = text.count("\n", 0, err.position) + 1
        raise BadInput(f"{what} {path} is not valid YAML at line {line}: {err.reason} "
                       f"(character #x{err.character:04x})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or type(err).__name__
        raise BadInput(f"{what} {path} is not valid YAML{_at(mark)}: {problem}") from None
    except RecursionError:
        raise BadInput(f"{what} {path} is nested too deeply to be a {what}") from None
    except ValueError as err:  # a value YAML resolves but Python refuses: a date 2024-13-45, a 5000-digit number
        where = _at(getattr(err, "yaml_mark", None))
        raise BadInput(f"{what} {path} holds a value that cannot be read{where}: {str(err).split(':')[0]}") from None


def load_text(text: str, what: str, path: Path) -> Any:
    """YAML text (read from ``path``, which names it in messages) composed, its aliases checked, then built;
    YAML's and Python's own exceptions pass (:func:`read_yaml` turns them into one line)."""
    loader = _Loader(text)  # the reader checks the characters here: a ReaderError
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node, what, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` whose ValueErrors (from a scalar Python refuses) remember the node's position."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as err:
            if not hasattr(err, "yaml_mark"):  # the innermost node: the scalar itself
                err.yaml_mark = node.start_mark
            raise


def _check_aliases(root: yaml.Node, what: str, path: Path) -> None:
    """Refuse a node graph whose aliases expand it by more than MAX_ALIAS_GROWTH values, or loop.

    Aliases make the composed graph share nodes; walked as a tree, each shared node counts once
    per reference. Sizes are computed once per node (post-order, without recursion), so the check
    costs what composing did, however large the expansion would be.
    """
    distinct: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in distinct:
            distinct.add(id(node))
            stack.extend(_children(node))
    bound = len(distinct) + MAX_ALIAS_GROWTH
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # being sized: their descendants are on the stack
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, children_done = pending.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > bound:
                raise BadInput(f"invalid {what} {path}: its aliases expand past {MAX_ALIAS_GROWTH} values"
                               f"{_at(node.start_mark)}; write the values out instead")
            sizes[key] = size
        elif key in open_nodes:
            raise BadInput(f"invalid {what} {path}: the value{_at(node.start_mark)} contains itself through an alias")
        elif key not in sizes:
            open_nodes.add(key)
            pending.append((node, True))
            pending.extend((child, False) for child in _children(node))


def _children(node: yaml.Node) -> Iterable[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return ()


def _at(mark) -> str:
    return f" at line {mark.line + 1}" if mark is not None else ""
