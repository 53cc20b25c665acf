"""The revision history's summaries: what changed between two specs, by dotted key."""

from __future__ import annotations

from gpupool.console.revisions import MAX_KEYS, history, spec_diff


def test_a_diff_names_changed_added_and_removed_keys() -> None:
    old = {"command": "serve", "replicas": {"min": 1, "max": 2}, "models": ["a"], "env": {}}
    new = {"command": "serve --fast", "replicas": {"min": 1, "max": 3}, "env": {"DEBUG": "1"}}
    assert spec_diff(old, new) == "changed command, replicas.max; added env.DEBUG; removed env, models"
    assert spec_diff(new, new) == "no change"
    assert spec_diff({"models": ["a"]}, {"models": ["a", "b"]}) == "changed models"  # a list is one value


def test_a_diff_of_a_rewritten_spec_stays_one_line() -> None:
    old = {f"k{i:02d}": i for i in range(20)}
    new = {f"k{i:02d}": i + 1 for i in range(20)}
    assert spec_diff(old, new) == "changed " + ", ".join(f"k{i:02d}" for i in range(MAX_KEYS)) + " and 12 more"


def test_the_history_is_newest_first_and_a_service_never_updated_has_its_submitted_spec() -> None:
    assert [(r.revision, r.reason, r.changes) for r in history([], 5.0, {"command": "x"})] == [
        (1, "submitted", "submitted")
    ]
    stored = [
        (1, 5.0, "submitted", {"command": "x"}),
        (2, 9.0, "updated by nina", {"command": "y"}),
        (3, 12.0, "rolled back by nina to the spec of revision 1", {"command": "x"}),
    ]
    lines = history(stored, 5.0, {"command": "x"})
    assert [(r.revision, r.at, r.changes) for r in lines] == [
        (3, 12.0, "changed command"),
        (2, 9.0, "changed command"),
        (1, 5.0, "submitted"),
    ]
