"""The tools agent: training request forms, arithmetic, unit conversions, the clock and the refusals."""

from __future__ import annotations

import ast
import re

import pytest

from interaction_jax.serve.tools import ToolError, _eval_node, answer


def test_training_addition_requests():
    assert answer("17+25") == "42"
    assert answer("3+4") == "7"
    assert answer("48+51") == "99"


def test_training_time_request_at_stream_start():
    assert answer("time", stream_time_s=0.0, clock_start="3:15") == "3:15"


@pytest.mark.parametrize(
    ("clock_start", "stream_time_s", "expected"),
    [
        ("12:00", 0.0, "12:00"),  # the default start, noon
        ("3:15", 59.9, "3:15"),  # floored to whole minutes
        ("3:15", 60.0, "3:16"),
        ("3:15", 45 * 60.0, "4:00"),
        ("12:45", 15 * 60.0, "1:00"),  # past 12:59 the hour goes back to 1
        ("12:59", 60.0, "1:00"),
        ("23:59", 60.0, "12:00"),  # past midnight
        ("23:30", 3725.0, "12:32"),
        ("0:05", 0.0, "12:05"),
        ("15:05", 0.0, "3:05"),  # 24-hour start
        ("13:05", 0.0, "1:05"),
        ("11:59", 60.0, "12:00"),
        ("9:00", 24 * 3600.0, "9:00"),  # a whole day later
    ],
)
def test_clock(clock_start, stream_time_s, expected):
    assert answer("time", stream_time_s=stream_time_s, clock_start=clock_start) == expected


@pytest.mark.parametrize(
    "request_", ["time", "Time", " TIME? ", "clock", "what time is it", "What time is it?", "the time."]
)
def test_clock_request_forms(request_):
    assert answer(request_, stream_time_s=120.0, clock_start="10:10") == "10:12"


def test_answer_is_pure():
    assert [answer("time", stream_time_s=90.0, clock_start="7:30") for _ in range(3)] == ["7:31"] * 3
    assert [answer("1/3") for _ in range(3)] == ["0.333333"] * 3


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("2+3*4", "14"),  # precedence
        ("(2+3)*4", "20"),  # parentheses
        ("2*(3+(4-1))", "12"),
        ("10-4-3", "3"),  # left-associative
        ("-5+2", "-3"),  # unary minus
        ("--5", "5"),
        ("2*-3", "-6"),
        ("-(2+3)", "-5"),
        ("2**10", "1024"),
        ("2**3**2", "512"),  # ** is right-associative
        ("-2**2", "-4"),
        ("2**-1", "0.5"),
        ("7//2", "3"),
        ("-7//2", "-4"),
        ("7%3", "1"),
        ("14/2", "7"),  # an integral quotient prints as an int
        ("1/3", "0.333333"),
        ("2/3", "0.666667"),
        ("-1/3", "-0.333333"),
        ("0.1+0.2", "0.3"),  # float round-off hidden
        ("10/4", "2.5"),
        ("1.5+1.5", "3"),
        ("1/1000000", "0.000001"),  # no scientific notation
        ("3.14159265", "3.14159"),
        ("10**15", "1000000000000000"),
        ("999999999999999+1", "1000000000000000"),
        ("007+1", "8"),
        ("  17 + 25  ", "42"),
        ("17+25=", "42"),
        ("what is 17+25?", "42"),
        ("What is 6 times 7", "42"),
        ("9 plus 10", "19"),
        ("9 minus 10", "-1"),
        ("3 multiplied by 4", "12"),
        ("10 divided by 4", "2.5"),
        ("2 to the power of 10", "1024"),
        ("2 plus 3 times 4", "14"),
    ],
)
def test_arithmetic(request_, expected):
    assert answer(request_) == expected


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("5 km in miles", "3.10686 miles"),
        ("1 mile to km", "1.60934 km"),
        ("6 feet to m", "1.8288 m"),
        ("5 in in cm", "12.7 cm"),
        ("100 yards in m", "91.44 m"),
        ("250 mm to cm", "25 cm"),
        ("what is 1 ft in inches?", "12 inches"),
        ("2.5 kg to lb", "5.51156 lb"),
        ("16 oz in g", "453.592 g"),
        ("1 lbs in oz", "16 oz"),
        ("500 mg to g", "0.5 g"),
        ("100 c to f", "212 f"),
        ("32 f to c", "0 c"),
        ("-40 F to C", "-40 C"),  # the target unit as written
        ("0 k to celsius", "-273.15 celsius"),
        ("25 c in kelvin", "298.15 kelvin"),
        ("212 fahrenheit to k", "373.15 k"),
        ("3 hours in minutes", "180 minutes"),
        ("1 day in s", "86400 s"),
        ("90 min to hr", "1.5 hr"),
        ("1 gallon to l", "3.78541 l"),
        ("500 ml in litres", "0.5 litres"),
        ("2 L to ML", "2000 ML"),
    ],
)
def test_unit_conversion(request_, expected):
    assert answer(request_) == expected


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ("1/0", "cannot divide by zero."),
        ("5 % 0", "cannot divide by zero."),
        ("7 // (2-2)", "cannot divide by zero."),
        ("2**65", "exponent 65 is too large: the limit is 64."),
        ("2**-100", "exponent -100 is too large: the limit is 64."),
        ("10**16", "number too large: the limit is 1e15."),
        ("99999999 * 99999999", "number too large: the limit is 1e15."),
        ("(-8)**(1/3)", "no real answer: a negative number to a fractional power."),
        ("1+" * 101, "request too long: 202 characters, the limit is 200."),
        ("5 km in kg", "cannot convert km to kg: km is a length and kg is a mass."),
        ("3 hours to litres", "cannot convert hours to litres: hours is a time and litres is a volume."),
        ("5 parsecs in m", "unknown unit 'parsecs'."),
        ("5 m in furlongs", "unknown unit 'furlongs'."),
        ("-500 c to k", "-500 c is below absolute zero."),
        ("", "empty request: there is nothing to answer."),
        ("  ?! ", "empty request: there is nothing to answer."),
        ("hello world", "cannot answer 'hello world': not arithmetic, a unit conversion or the time."),
        ("xyz", "cannot answer 'xyz': not arithmetic, a unit conversion or the time."),
        ("1.2.3", "cannot answer '1.2.3': not arithmetic, a unit conversion or the time."),
        ("2(3)", "cannot answer '2(3)': not arithmetic, a unit conversion or the time."),
        ("__import__('os')", "cannot answer \"__import__('os')\": not arithmetic, a unit conversion or the time."),
        ("(1).real", "cannot answer '(1).real': not arithmetic, a unit conversion or the time."),
        ("().__class__", "cannot answer '().__class__': not arithmetic, a unit conversion or the time."),
    ],
)
def test_errors(request_, message):
    with pytest.raises(ToolError, match=f"^{re.escape(message)}$"):
        answer(request_)


@pytest.mark.parametrize("clock_start", ["25:00", "12:60", "3:5", "noon", "", "-1:00"])
def test_bad_clock_start(clock_start):
    message = f"bad clock_start {clock_start!r}: expected H:MM with hour 0-23 and minute 0-59."
    with pytest.raises(ToolError, match=f"^{re.escape(message)}$"):
        answer("time", clock_start=clock_start)


def test_bad_stream_time():
    with pytest.raises(ToolError, match=r"^bad stream_time_s -1\.0: expected a finite number of seconds >= 0\.$"):
        answer("time", stream_time_s=-1.0)


@pytest.mark.parametrize("expression", ["__import__('os')", "(1).real", "abs(-1)", "x", "[1]", "'a'", "1 if 1 else 2"])
def test_evaluator_whitelist_rejects_non_arithmetic(expression):
    # The character filter already stops these in `answer`; the AST whitelist behind it must refuse them too.
    with pytest.raises(ToolError, match="not arithmetic, a unit conversion or the time"):
        _eval_node(ast.parse(expression, mode="eval").body, expression)


def test_tool_error_is_a_value_error():
    assert issubclass(ToolError, ValueError)
    with pytest.raises(ValueError, match="cannot divide by zero"):
        answer("1/0")
