"""Reading a spec's YAML text from an untrusted client: safe tags only, no aliases, bounded nesting.

libyaml (PyYAML's C parser) reads a small spec in about a tenth of the time of the pure-Python one, which
is a visible share of a submission's CPU. Its composer recurses in C without Python's recursion limit, so
the text is first read as a flat stream of events (libyaml keeps its own stack, on the heap), which refuses
aliases (`*name`: a few lines can expand into a huge document) and nesting deeper than `MAX_NESTING`,
before anything is composed. Without libyaml, the pure-Python loader does the same checks.
"""

from __future__ import annotations

from typing import Any

import yaml

from gpupool.domain.errors import ValidationError

# Deeper than any spec this product reads (a pipeline's step inside its steps inside its spec is five
# levels), shallow enough that neither libyaml's composer nor Python's recursion gets near its limits.
MAX_NESTING = 64
FIELD = "spec_yaml"
_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
C_LOADER: type[Any] | None = getattr(yaml, "CSafeLoader", None)


def _alias_error(event: yaml.Event) -> ValidationError:
    return ValidationError(f"YAML aliases (*name) are not allowed in specs (line {event.start_mark.line + 1})",
                           FIELD)


def _nesting_error(event: yaml.Event) -> ValidationError:
    return ValidationError(f"the YAML nests deeper than {MAX_NESTING} levels (line {event.start_mark.line + 1}); "
                           "a spec needs a handful", FIELD)


class _CheckedPureLoader(yaml.SafeLoader):
    """The pure-Python safe loader with the same refusals (aliases, nesting) as the event check."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _alias_error(self.peek_event())
        if not self.check_event(*_OPENS):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _nesting_error(self.peek_event())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_events(text: str, loader: type[Any]) -> None:
    """Refuse aliases and nesting deeper than MAX_NESTING, reading `text` as events (nothing composed)."""
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.AliasEvent):
            raise _alias_error(event)
        if isinstance(event, _OPENS):
            depth += 1
            if depth > MAX_NESTING:
                raise _nesting_error(event)
        elif isinstance(event, _CLOSES):
            depth -= 1


def load_spec_yaml(text: str, c_loader: type[Any] | None = C_LOADER) -> Any:
    """The data of a spec's YAML text. ValidationError (field spec_yaml) saying where, for text that is not
    YAML, has an alias, nests too deep or names an unsafe tag. `c_loader`: libyaml's safe loader, or None
    for the pure-Python one (both give the same data)."""
    try:
        if c_loader is None:
            return yaml.load(text, Loader=_CheckedPureLoader)
        check_events(text, c_loader)
        return yaml.load(text, Loader=c_loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationError(f"the YAML cannot be read{where}: {exc.problem or exc}", FIELD) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValidationError(f"the YAML cannot be read: {type(exc).__name__}", FIELD) from None
