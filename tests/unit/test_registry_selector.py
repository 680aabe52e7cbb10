"""LabelSelector matching with Kubernetes semantics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubespiffe.registry.models import LabelRequirement, LabelSelector, RegistrationError
from kubespiffe.registry.selector import requirement_matches, selector_matches

LABELS = {"app": "api", "tier": "backend"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        (None, True),
        (LabelSelector(), True),
        (LabelSelector({"app": "api"}), True),
        (LabelSelector({"app": "api", "tier": "backend"}), True),
        (LabelSelector({"app": "web"}), False),
        (LabelSelector({"missing": "x"}), False),
        (LabelSelector(match_expressions=(LabelRequirement("app", "In", ("web", "api")),)), True),
        (LabelSelector(match_expressions=(LabelRequirement("app", "In", ("web",)),)), False),
        (LabelSelector(match_expressions=(LabelRequirement("missing", "In", ("x",)),)), False),
        (LabelSelector(match_expressions=(LabelRequirement("app", "NotIn", ("web",)),)), True),
        (LabelSelector(match_expressions=(LabelRequirement("app", "NotIn", ("api",)),)), False),
        (LabelSelector(match_expressions=(LabelRequirement("missing", "NotIn", ("x",)),)), True),
        (LabelSelector(match_expressions=(LabelRequirement("app", "Exists"),)), True),
        (LabelSelector(match_expressions=(LabelRequirement("missing", "Exists"),)), False),
        (LabelSelector(match_expressions=(LabelRequirement("missing", "DoesNotExist"),)), True),
        (LabelSelector(match_expressions=(LabelRequirement("app", "DoesNotExist"),)), False),
        (LabelSelector({"app": "api"}, (LabelRequirement("tier", "NotIn", ("backend",)),)), False),
        (LabelSelector({"app": "api"}, (LabelRequirement("tier", "In", ("backend",)),)), True),
    ],
)
def test_selector_matches(selector: LabelSelector | None, matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


@pytest.mark.parametrize(
    ("key", "operator", "values", "message"),
    [
        ("app", "In", (), "needs values"),
        ("app", "NotIn", (), "needs values"),
        ("app", "Exists", ("x",), "takes no values"),
        ("app", "DoesNotExist", ("x",), "takes no values"),
        ("app", "Gt", ("1",), "is not one of"),
        ("bad key", "Exists", (), "not a valid label key"),
        ("app", "In", ("bad value",), "not a valid label value"),
        ("app", "In", tuple(f"v{i}" for i in range(65)), "more than 64 values"),
    ],
)
def test_invalid_requirements_are_refused(
    key: str, operator: str, values: tuple[str, ...], message: str
) -> None:
    with pytest.raises(RegistrationError, match=message):
        LabelRequirement(key, operator, values)  # type: ignore[arg-type]


_keys = st.sampled_from(["a", "b", "c", "x.io/d"])
_values = st.sampled_from(["1", "2", "3"])
_labels = st.dictionaries(_keys, _values, max_size=4)
_value_sets = st.lists(_values, min_size=1, max_size=3, unique=True).map(tuple)


@given(_labels, _keys, _value_sets)
def test_not_in_is_the_complement_of_in(labels: dict[str, str], key: str, values: tuple[str, ...]) -> None:
    assert requirement_matches(LabelRequirement(key, "NotIn", values), labels) is not requirement_matches(
        LabelRequirement(key, "In", values), labels
    )


@given(_labels, _keys)
def test_does_not_exist_is_the_complement_of_exists(labels: dict[str, str], key: str) -> None:
    assert requirement_matches(LabelRequirement(key, "DoesNotExist"), labels) is (key not in labels)
    assert requirement_matches(LabelRequirement(key, "Exists"), labels) is (key in labels)


@given(_labels, _keys, _values)
def test_match_labels_equals_in_with_one_value(labels: dict[str, str], key: str, value: str) -> None:
    by_labels = LabelSelector({key: value})
    by_expression = LabelSelector(match_expressions=(LabelRequirement(key, "In", (value,)),))
    assert selector_matches(by_labels, labels) is selector_matches(by_expression, labels)


_requirements = st.one_of(
    st.builds(LabelRequirement, _keys, st.sampled_from(["In", "NotIn"]), _value_sets),
    st.builds(LabelRequirement, _keys, st.sampled_from(["Exists", "DoesNotExist"])),
)


@given(_labels, st.dictionaries(_keys, _values, max_size=2), st.lists(_requirements, max_size=3))
def test_a_selector_is_the_conjunction_of_its_parts(
    labels: dict[str, str], match_labels: dict[str, str], requirements: list[LabelRequirement]
) -> None:
    selector = LabelSelector(match_labels, tuple(requirements))
    parts = [selector_matches(LabelSelector({k: v}), labels) for k, v in match_labels.items()]
    parts += [requirement_matches(r, labels) for r in requirements]
    assert selector_matches(selector, labels) is all(parts)
