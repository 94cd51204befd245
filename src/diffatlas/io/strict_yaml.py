"""YAML read strictly: duplicate keys are refused and alias expansion is bounded (a "billion laughs"
file is refused, not expanded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .read import read_text

YAML_MAX_NODES = 100_000  # a config or study file expands to at most this many YAML nodes


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may be overridden)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found the key {key!r} twice (first at line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Number of nodes `node` stands for once every alias is expanded, counted without expanding; a
    value above `limit` stops the count. A node that contains itself counts as over the limit."""
    memo: dict[int, int] = {}
    busy: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in busy:
            return limit + 1
        busy.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for c in children:
            total += size(c)
            if total > limit:
                break
        busy.discard(key)
        memo[key] = total
        return total

    return size(node)


def parse_yaml(text: str, source: str, fix: str = "") -> Any:
    """Parse YAML text (a file's content, or a command-line value named by `source`) strictly."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters already here
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, YAML_MAX_NODES) > YAML_MAX_NODES:
            raise UserError(f"{source} expands to more than {YAML_MAX_NODES:,} YAML values through its aliases "
                            "(&anchor / *alias), or refers to itself; write the values out" + (f"; {fix}" if fix else ""))
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise UserError(f"{source} does not parse as YAML{where}" + (f": {problem}" if problem else "")
                        + (f"; {fix}" if fix else "")) from None
    except RecursionError:
        raise UserError(f"{source} is nested too deeply to be a config" + (f"; {fix}" if fix else "")) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, what: str, fix: str = "") -> Any:
    """A YAML file's content, parsed strictly (see :func:`parse_yaml`)."""
    text = read_text(path, what, fix)
    return parse_yaml(text, f"{what} {str(path)!r}", fix)
