"""The attribute-expression language: parsing, precedence, weights, errors with columns, validation."""

from __future__ import annotations

import pytest
import torch

from latent_flow.compositional.expression import (
    And,
    ExpressionError,
    Not,
    Or,
    Term,
    parse,
    satisfied,
    terms,
    to_string,
    validate,
)

VALUES = {"shape": ["circle", "square", "triangle"], "color": ["red", "green", "blue"], "size": ["small", "large"]}


def test_precedence_and_structure():
    node = parse("shape=triangle & color=red | !(size=small)")
    assert node == Or((And((Term("shape", "triangle"), Term("color", "red"))), Not(Term("size", "small"))))
    node = parse("shape=triangle & (color=red | color=blue)")
    assert isinstance(node, And) and isinstance(node.children[1], Or)
    assert parse("!!shape=circle") == Not(Not(Term("shape", "circle")))
    assert parse("color!=red") == Not(Term("color", "red"))
    assert parse("  shape = circle  ") == Term("shape", "circle")


def test_weights_prefix_suffix_and_nesting():
    assert parse("2.0*color=red") == Term("color", "red", weight=2.0)
    assert parse("color=red@2") == Term("color", "red", weight=2.0)
    assert parse("3*color=red@2").weight == 6.0
    node = parse("(color=red | color=blue)@0.5 & 1e-1*shape=circle")
    assert node.children[0].weight == 0.5 and node.children[1].weight == pytest.approx(0.1)
    # weights bind tighter than '!': the first weights the negated term, the second the NOT
    assert parse("!(size=small)@0.25") == Not(Term("size", "small", weight=0.25))
    assert parse("(!size=small)@0.25") == Not(Term("size", "small"), weight=0.25)


@pytest.mark.parametrize(
    "text",
    ["shape=triangle & color=red & !(size=small)", "2*shape=circle | (color=red@3 & !size=large)", "a=b"],
)
def test_to_string_round_trip(text):
    node = parse(text)
    assert parse(to_string(node)) == node


@pytest.mark.parametrize(
    "text, fragment, column",
    [
        ("shape=", "expected a value after 'shape='", 7),
        ("shape=triangle &", "expected a condition", 17),
        ("(shape=circle", "the '(' opened at column 1 is never closed", 14),
        ("shape=circle)", "unbalanced ')'", 13),
        ("shape circle", "expected '=' after attribute name 'shape'", 7),
        ("shape=circle # x", "unexpected character '#'", 14),
        ("shape=circle & & color=red", "expected a condition", 16),
        ("2 & shape=circle", "must be followed by '*'", 3),
        ("color=red@0", "weight must be > 0", 11),
        ("color=red@x", "expected a positive number as weight", 11),
        ("()", "empty parentheses", 2),
        ("shape=circle color=red", "expected '&', '|' or the end", 14),
    ],
)
def test_parse_errors_name_the_problem_and_column(text, fragment, column):
    with pytest.raises(ExpressionError) as err:
        parse(text)
    assert fragment in str(err.value)
    assert err.value.column == column
    assert f"at column {column}" in str(err.value) and "^" in str(err.value)


def test_empty_expression():
    with pytest.raises(ExpressionError, match="empty expression"):
        parse("   ")


def test_validate_lists_valid_attributes_and_values():
    with pytest.raises(
        ExpressionError, match=r"unknown attribute 'colour'; valid attributes: shape, color, size"
    ) as err:
        validate(parse("shape=circle & colour=red"), VALUES, text="shape=circle & colour=red")
    assert err.value.column == 16
    with pytest.raises(
        ExpressionError, match=r"unknown value 'purple' for attribute 'color'; valid values: red, green, blue"
    ):
        validate(parse("color=purple"), VALUES)
    # continuous attributes take numbers
    validate(parse("hue=0.25"), VALUES, continuous=["hue"])
    with pytest.raises(ExpressionError, match="continuous attribute 'hue' needs a number"):
        validate(parse("hue=warm"), VALUES, continuous=["hue"])


def test_satisfied_boolean_semantics():
    node = parse("shape=triangle & !(color=red) | size=large")
    shape = torch.tensor([2, 2, 0, 0])
    color = torch.tensor([0, 1, 0, 0])
    size = torch.tensor([0, 0, 1, 0])
    table = {"shape": shape, "color": color, "size": size}

    def value_of(term: Term):
        return table[term.attribute] == VALUES[term.attribute].index(term.value)

    assert satisfied(node, value_of).tolist() == [False, True, True, False]
    assert [t.attribute for t in terms(node)] == ["shape", "color", "size"]
