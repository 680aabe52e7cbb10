"""Kubernetes LabelSelector semantics, as apimachinery's labels.Selector applies them."""

from __future__ import annotations

from collections.abc import Mapping

from kubespiffe.registry.models import LabelRequirement, LabelSelector


def requirement_matches(requirement: LabelRequirement, labels: Mapping[str, str]) -> bool:
    """NotIn and DoesNotExist also match objects that lack the label, as in Kubernetes."""
    value = labels.get(requirement.key)
    if requirement.operator == "In":
        return value is not None and value in requirement.values
    if requirement.operator == "NotIn":
        return value is None or value not in requirement.values
    if requirement.operator == "Exists":
        return value is not None
    return value is None


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """An absent or empty selector matches everything; otherwise every label and expression must match."""
    if selector is None:
        return True
    return all(labels.get(k) == v for k, v in selector.match_labels.items()) and all(
        requirement_matches(r, labels) for r in selector.match_expressions
    )
